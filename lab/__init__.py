"""The ICL lab: experiments on in-context learning (shots, order, labels, selection, fine-tuning).

    python -m lab order --train TRAIN.jsonl --test TEST.jsonl --k 4 --n-test 100 --out runs/order

In code (e.g. from the UI, in a background thread):

    from lab.runner import run_experiment, list_runs
    from lab.config import LabConfig
    folder = run_experiment("order", LabConfig(train=..., test=...), progress=lambda f, msg: ...)

Nothing heavy is imported here.
"""
