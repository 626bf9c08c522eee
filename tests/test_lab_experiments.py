"""Every experiment end to end on a tiny model and pool, with the model-free hash embedder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.config import LabConfig
from lab.errors import LabError
from lab.runner import list_runs, run_experiment

TRAIN = [
    ("the quick brown fox", "positive"), ("a lazy dog", "negative"), ("great film", "positive"),
    ("terrible movie", "negative"), ("the capital of France", "positive"), ("what is the dog", "negative"),
    ("great review", "positive"), ("lazy film", "negative"),
]
TEST = [("quick fox", "positive"), ("terrible dog", "negative"), ("great movie", "positive"), ("lazy review", "negative")]


def write_pool(path, rows):
    path.write_text("".join(json.dumps({"input": i, "output": o}) + "\n" for i, o in rows))
    return str(path)


def tiny_files(tmp_path, train=TRAIN, test=TEST):
    return write_pool(tmp_path / "train.jsonl", train), write_pool(tmp_path / "test.jsonl", test)


def config(tmp_path, name, **overrides):
    train, test = tiny_files(tmp_path)
    fields = dict(train=train, test=test, k=2, ks=[0, 1, 2], seeds=[0, 1], embedder="hash",
                  probe_size=3, out=str(tmp_path / "runs" / name))
    fields.update(overrides)
    return LabConfig(**fields)


def run(tmp_path, tiny, name, **overrides):
    seen = []
    folder = run_experiment(name, config(tmp_path, name, **overrides), progress=lambda f, m: seen.append(f), loaded=tiny)
    for artefact in ("result.json", "report.md", "plot.png"):
        assert (folder / artefact).stat().st_size > 0
    assert seen[-1] == 1.0
    assert "## How sure" in (folder / "report.md").read_text()
    return json.loads((folder / "result.json").read_text())


def interval_means(result: dict) -> dict:
    """What the report's uncertainty section gives as each condition's accuracy."""
    return {row["name"]: row["mean"] for row in result["uncertainty"]["intervals"]}


def test_order(tmp_path, tiny):
    result = run(tmp_path, tiny, "order", k=3, permutations=6)
    assert len(result["permutations"]) == 12  # 3! orders x 2 seeds
    accuracies = [p["accuracy"] for p in result["permutations"]]
    assert result["min"] == min(accuracies) and result["max"] == max(accuracies)
    assert result["mean"] == pytest.approx(sum(accuracies) / 12)
    lu = result["sets"][0]["lu"]
    assert lu["globale"]["order"] in [p["order"] for p in result["sets"][0]["permutations"]]
    assert len(lu["globale_scores"]) == 6
    means = interval_means(result)  # the intervals sit on the same numbers as the table
    assert means["set 0, all orders"] == pytest.approx(result["sets"][0]["mean"])
    assert means["set 0, GlobalE pick"] == pytest.approx(lu["globale"]["accuracy"])
    assert means["set 1, LocalE pick"] == pytest.approx(result["sets"][1]["lu"]["locale"]["accuracy"])
    runs = {row["name"]: row["runs"] for row in result["uncertainty"]["intervals"]}
    assert runs["set 0, all orders"] == 1  # all 3! orders were scored: their mean is exact, not redrawn


def test_order_samples_when_k_is_large(tmp_path, tiny):
    result = run(tmp_path, tiny, "order", k=4, permutations=5, seeds=[0])
    assert len({tuple(p["order"]) for p in result["permutations"]}) == 5
    runs = {row["name"]: row["runs"] for row in result["uncertainty"]["intervals"]}
    assert runs["set 0, all orders"] == 5  # a sample of 5 of the 24 orders: they are redrawn


def test_shots(tmp_path, tiny):
    result = run(tmp_path, tiny, "shots")
    rows = {(r["k"], r["selection"], r["seed"]) for r in result["results"]}
    assert (0, "random", None) in rows and (2, "random", 1) in rows and (2, "knn", None) in rows
    report = (tmp_path / "runs" / "shots" / "report.md").read_text()
    assert "- ks=[0, 1, 2], seeds=[0, 1]" in report and "- k=2" not in report  # shots sweeps ks; k does not apply
    shown = {(r["k"], r["seed"]): r["shown"] for r in result["results"] if r["selection"] == "random" and r["k"]}
    for seed in (0, 1):  # nested sets: k=1 shows the first demonstration of the seed's k=2 set
        assert shown[1, seed] == shown[2, seed][:1] and len(shown[2, seed]) == 2
    assert shown[2, 0] != shown[2, 1]  # sanity: the seeds draw different sets
    accuracy = {(r["k"], r["selection"], r["seed"]): r["accuracy"] for r in result["results"]}
    means = interval_means(result)
    assert means["kNN, k=2"] == pytest.approx(accuracy[2, "knn", None])
    assert means["random, k=2"] == pytest.approx((accuracy[2, "random", 0] + accuracy[2, "random", 1]) / 2)
    assert means["k=0"] == pytest.approx(accuracy[0, "random", None])
    differences = {row["name"]: row["difference"] for row in result["uncertainty"]["comparisons"]}
    assert differences["kNN - random, k=1"] == pytest.approx(means["kNN, k=1"] - means["random, k=1"])
    assert differences["kNN, k=2 - zero-shot"] == pytest.approx(means["kNN, k=2"] - means["k=0"])


def test_labels(tmp_path, tiny):
    result = run(tmp_path, tiny, "labels")
    conditions = [r["condition"] for r in result["results"]]
    assert conditions.count("gold") == conditions.count("random") == conditions.count("none") == 2


OUT_OF_DOMAIN = ["rain is expected on tuesday", "the train leaves at nine", "set an alarm for six",
                 "how tall is the tower", "remind me to call mum", "convert ten miles to km"]


def test_labels_with_out_of_distribution_inputs(tmp_path, tiny):
    """The ood condition is the random condition with only its inputs swapped for the ood pool's
    (test items held out of it), scored as the naive one-prompt-per-label loop scores it."""
    from lab.data import load_data
    from lab.naive import naive_score
    from lab.predict import Case, Predictor
    from lab.prompt import Demo, PromptFormat

    ood = write_pool(tmp_path / "ood.jsonl", [(text, "n/a") for text in OUT_OF_DOMAIN] + [(TEST[0][0], "n/a")])
    result = run(tmp_path, tiny, "labels", ood=ood, seeds=[0, 1, 2])
    data = load_data(result["config"]["train"], result["config"]["test"], result["n_test"])
    naive = Predictor(tiny.model, tiny.tokenizer, PromptFormat("plain"), data.labels,
                      scorer=lambda prompt, labels: naive_score(tiny.model, tiny.tokenizer, prompt, labels))
    for seed in (0, 1, 2):
        rows = {r["condition"]: r for r in result["results"] if r["seed"] == seed}
        inputs = [d["input"] for d in rows["ood"]["shown"]]
        assert len(set(inputs)) == 2 and set(inputs) <= set(OUT_OF_DOMAIN)  # never the test item in the ood file
        assert [d["output"] for d in rows["ood"]["shown"]] == [d["output"] for d in rows["random"]["shown"]]
        demos = tuple(Demo(**d) for d in rows["ood"]["shown"])
        assert rows["ood"]["predictions"] == naive.predict([Case(demos, i.input, i.output) for i in data.test])
    report = (tmp_path / "runs" / "labels" / "report.md").read_text()
    assert "| ood |" in report and result["means"].keys() == {"gold", "random", "ood", "none"}
    assert interval_means(result) == pytest.approx(result["means"])
    differences = {row["first"] + " - " + row["second"]: row["difference"] for row in result["uncertainty"]["comparisons"]}
    assert differences["random - ood"] == pytest.approx(result["means"]["random"] - result["means"]["ood"])
    assert differences["gold - none"] == pytest.approx(result["means"]["gold"] - result["means"]["none"])
    assert f"- out-of-distribution inputs: {tmp_path / 'ood.jsonl'} (6 inputs)" in report  # typed whole, shown whole


def test_out_of_distribution_inputs_are_refused_where_they_cannot_be_used(tmp_path, tiny):
    few = write_pool(tmp_path / "few.jsonl", [(OUT_OF_DOMAIN[0], "n/a")])
    with pytest.raises(LabError, match=r"k=2 is larger than the --ood pool \(1 input in .*few.jsonl\)"):
        run_experiment("labels", config(tmp_path, "x", ood=few), loaded=tiny)
    with pytest.raises(LabError, match="--ood is read by the labels experiment only; drop it for order"):
        run_experiment("order", config(tmp_path, "y", ood=few), loaded=tiny)
    train, _ = tiny_files(tmp_path)
    with pytest.raises(LabError, match=r"the out-of-distribution pool \(--ood\) is the train or test file; give a pool from another task"):
        run_experiment("labels", config(tmp_path, "z", ood=str(Path(train).parent / "." / Path(train).name)), loaded=tiny)


def test_select(tmp_path, tiny):
    """Each row records what its prompts showed: per item for kNN and MMR (as a fresh chooser picks
    them), one set for random."""
    from dataclasses import asdict

    from lab.data import load_data
    from lab.demos import DemoChooser

    result = run(tmp_path, tiny, "select")
    assert {r["selection"] for r in result["results"]} == {"knn", "mmr", "random"}
    data = load_data(result["config"]["train"], result["config"]["test"], result["n_test"])
    chooser = DemoChooser(data.train, "hash")
    rows = {(r["selection"], r["seed"]): r for r in result["results"]}
    for selection in ("knn", "mmr"):
        expected = [[asdict(d) for d in chooser.for_query(item.input, 2, selection, 0)] for item in data.test]
        assert rows[selection, None]["shown"] == expected
    assert rows["knn", None]["shown"] != rows["mmr", None]["shown"]  # sanity: the two pick differently
    assert rows["random", 1]["shown"] == [asdict(d) for d in chooser.for_query("", 2, "random", 1)]
    assert interval_means(result) == pytest.approx({"kNN": result["means"]["knn"], "MMR": result["means"]["mmr"],
                                                    "random": result["means"]["random"]})


def test_calibrated_run(tmp_path, tiny):
    result = run(tmp_path, tiny, "labels", calibrate=True, seeds=[0])
    assert result["config"]["calibrate"] is True


def test_generation_task(tmp_path, tiny):
    result = run(tmp_path, tiny, "labels", task="generate", seeds=[0], max_new_tokens=3)
    assert result["task"] == "generate"


def test_list_runs(tmp_path, tiny):
    run(tmp_path, tiny, "labels", seeds=[0])
    runs = list_runs(tmp_path / "runs")
    assert [r["experiment"] for r in runs] == ["labels"]


def test_unknown_experiment(tmp_path, tiny):
    with pytest.raises(LabError, match="unknown experiment 'shuffle'; available: shots, order"):
        run_experiment("shuffle", config(tmp_path, "x"), loaded=tiny)


def test_k_larger_than_pool(tmp_path, tiny):
    with pytest.raises(LabError, match="k=9 is larger than the training pool"):
        run_experiment("order", config(tmp_path, "x", k=9), loaded=tiny)


def test_test_label_outside_train_labels(tmp_path, tiny):
    train, test = tiny_files(tmp_path, test=[("quick fox", "neutral"), ("terrible dog", "negative")])
    with pytest.raises(LabError, match="test label 'neutral' does not occur in the training pool"):
        run_experiment("labels", LabConfig(train=train, test=test), loaded=tiny)


def test_empty_test_file(tmp_path, tiny):
    train, test = tiny_files(tmp_path, test=[])
    with pytest.raises(LabError, match="^--test: test.jsonl: the pool file is empty$"):  # the name once, not twice
        run_experiment("labels", LabConfig(train=train, test=test), loaded=tiny)


def test_bad_config_field():
    with pytest.raises(LabError, match="n_test must be a whole number >= 1"):
        LabConfig(train="a", test="b", n_test=0)


def test_cli_end_to_end(tmp_path):
    from tiny import save_tiny

    model = save_tiny(tmp_path / "model")
    train, test = tiny_files(tmp_path)
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "lab", "labels", "--train", train, "--test", test, "--model", model,
               "--k", "2", "--seeds", "0", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert json.loads((out / "result.json").read_text())["results"]


def test_cli_bad_input_exits_2(tmp_path):
    train, test = tiny_files(tmp_path, test=[])
    done = subprocess.run([sys.executable, "-m", "lab", "order", "--train", train, "--test", test],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "the pool file is empty" in done.stderr


def test_finetune(tmp_path, tiny):
    from tiny import save_tiny

    from lab.context import with_adapter

    model = save_tiny(tmp_path / "model")
    folder = run_experiment("finetune", config(tmp_path, "finetune", model=model, train_steps=2))
    result = json.loads((folder / "result.json").read_text())
    rows = {r["condition"]: r for r in result["results"]}
    assert set(rows) == {"prompting", "finetuned", "both"}
    assert rows["both"]["prompt_tokens"] > rows["finetuned"]["prompt_tokens"]
    assert interval_means(result) == pytest.approx({name: row["accuracy"] for name, row in rows.items()})
    assert (folder / "adapter" / "adapter_config.json").is_file()
    # Attaching the adapter leaves the caller's model alone (it may be the one the bot serves).
    tuned = with_adapter(tiny, folder / "adapter")
    assert any("lora" in name for name, _ in tuned.model.named_modules())
    assert not any("lora" in name for name, _ in tiny.model.named_modules())


def test_finetune_over_training_sizes(tmp_path, tiny):
    """Each size trains its own adapter on nested samples of the pool, and prompting picks its kNN
    demonstrations from the same rows: its predictions equal a fresh kNN run over that file alone."""
    from tiny import save_tiny

    from lab.data import load_data
    from lab.demos import DemoChooser
    from lab.predict import Case, Predictor
    from lab.prompt import PromptFormat
    from retrieval.pool import load_pool

    model = save_tiny(tmp_path / "model")
    folder = run_experiment("finetune", config(tmp_path, "sweep", model=model, train_steps=1, train_sizes=[6, 3]))
    result = json.loads((folder / "result.json").read_text())
    assert [(r["train_size"], r["condition"]) for r in result["results"]] == [
        (size, condition) for size in (3, 6) for condition in ("prompting", "finetuned", "both")]
    assert [t["train_size"] for t in result["trainings"]] == [3, 6]
    assert all((folder / f"adapter-{size}" / "adapter_config.json").is_file() for size in (3, 6))
    small, large = (load_pool(str(folder / f"train_pool-{size}.jsonl")) for size in (3, 6))
    assert [e.input for e in small.examples] == [e.input for e in large.examples][:3]  # nested samples

    data = load_data(result["config"]["train"], result["config"]["test"], result["n_test"])
    predictor = Predictor(tiny.model, tiny.tokenizer, PromptFormat("plain"), data.labels)
    full, few = DemoChooser(data.train, "hash"), DemoChooser(small, "hash")
    demos = [few.for_query(item.input, 2, "knn", 0) for item in data.test]
    assert demos != [full.for_query(item.input, 2, "knn", 0) for item in data.test]  # sanity: the rows matter
    expected = predictor.predict([Case(d, item.input, item.output) for d, item in zip(demos, data.test)])
    assert result["results"][0]["predictions"] == expected

    names = [row["name"] for row in result["uncertainty"]["comparisons"]]
    assert "finetuned - prompting, 3 rows" in names and "both - finetuned, 6 rows" in names
    report = (folder / "report.md").read_text()
    assert "| 3 | finetuned |" in report and "1 steps of 4 rows (4 rows seen, repeats included) per adapter" in report
    assert "Passes over each training set: 3 rows: 1.0, 6 rows: 0.5. Below 1" in report  # 1 step of 4: 3 or 4 of 6 rows
    assert [(t["examples"], t["steps"]) for t in result["trainings"]] == [(3, 1), (6, 1)]


@pytest.mark.parametrize("sizes, message", [
    ([100], r"train size 100 is larger than the training pool \(8 examples in .*train.jsonl\)"),
    ([1, 4], "train size 1 is smaller than k=2: prompting could not pick k demonstrations from it"),
])
def test_finetune_refuses_training_sizes_it_cannot_sample(tmp_path, tiny, sizes, message):
    with pytest.raises(LabError, match=message):
        run_experiment("finetune", config(tmp_path, "x", train_sizes=sizes), loaded=tiny)
    with pytest.raises(LabError, match=r"train_sizes must be a whole number >= 1, got 0"):
        config(tmp_path, "y", train_sizes=[0, 4])
    with pytest.raises(LabError, match="--train-sizes is read by the finetune experiment only; drop it for labels"):
        run_experiment("labels", config(tmp_path, "z", train_sizes=[4]), loaded=tiny)


def test_adapter_folder_must_hold_an_adapter(tmp_path, tiny):
    with pytest.raises(LabError, match=r"is missing adapter_config.json"):
        run_experiment("labels", config(tmp_path, "x", adapter=str(tmp_path)), loaded=tiny)


def lab_cli(*args):
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True, timeout=120)


def test_cli_bad_flag_is_one_line_with_a_pointer_to_help():
    done = lab_cli("order", "--train", "a", "--test", "b", "--seeds")
    assert done.returncode == 2
    assert done.stderr == "python -m lab: error: argument --seeds: expected at least one argument " \
                          "(see python -m lab --help)\n"


def test_cli_unknown_model_is_an_error_line_not_a_traceback(tmp_path):
    train, test = tiny_files(tmp_path)
    done = lab_cli("order", "--train", train, "--test", test, "--k", "2", "--model", "/nonexistent",
                   "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        "error: model '/nonexistent': no such folder or .gguf file")


def test_cli_help_describes_every_option_with_its_default():
    from test_cli import help_entries

    entries = help_entries(lab_cli("order", "--help").stdout)
    assert all(entries.values()), [flag for flag, text in entries.items() if not text]
    defaults = {"--k": "4", "--n-test": "100", "--seeds": "0 1 2", "--ks": "0 1 2 4 8", "--style": "plain",
                "--task": "auto", "--batch-size": "32", "--dtype": "float32", "--max-new-tokens": "16"}
    for flag, default in defaults.items():
        assert f"(default: {default})" in entries[flag], (flag, entries[flag])
    assert "Demonstrations per prompt" in entries["--k"]  # LabConfig's field docs, not a second copy


def test_unknown_adapter_name_lists_the_registry(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("ICL_BOT_ADAPTERS", str(tmp_path / "adapters"))
    root = tmp_path / "adapters"
    with pytest.raises(LabError, match=f"--adapter kelp: unknown adapter 'kelp'; available: none yet in {root} "
                                       r"\(python -m adapters.train makes one\)"):
        run_experiment("labels", config(tmp_path, "x", adapter="kelp"), loaded=tiny)


def test_adapter_by_registry_name_equals_adapter_by_folder(tmp_path, monkeypatch):
    from adapters.config import TrainConfig
    from adapters.train import train
    from tiny import save_tiny

    from bot.models import load_model

    base = save_tiny(tmp_path / "base")
    train_file, _ = tiny_files(tmp_path)
    folder = train(TrainConfig(data=train_file, output=str(tmp_path / "adapters" / "kelp"), model=base, rank=4,
                               alpha=8.0, learning_rate=3e-2, max_steps=4, batch_size=4, max_length=64,
                               progress=False, precision="fp32"))
    monkeypatch.setenv("ICL_BOT_ADAPTERS", str(tmp_path / "adapters"))
    loaded = load_model(base, dtype="float32", device="cpu")
    by_name = run_experiment("labels", config(tmp_path, "name", model=base, adapter="kelp", seeds=[0], task="generate",
                                              max_new_tokens=4), loaded=loaded)
    by_folder = run_experiment("labels", config(tmp_path, "folder", model=base, adapter=str(folder), seeds=[0],
                                                task="generate", max_new_tokens=4), loaded=loaded)
    named, foldered = (json.loads((f / "result.json").read_text()) for f in (by_name, by_folder))
    assert named["model"] == foldered["model"] == f"{loaded.name}+kelp"
    assert [r["accuracy"] for r in named["results"]] == [r["accuracy"] for r in foldered["results"]]
    other = load_model(save_tiny(tmp_path / "other-base", seed=1), dtype="float32", device="cpu")
    with pytest.raises(LabError, match="was trained on base model"):  # a folder is vetted like a name
        run_experiment("labels", config(tmp_path, "other", adapter=str(folder), seeds=[0], task="generate",
                                        max_new_tokens=4), loaded=other)
