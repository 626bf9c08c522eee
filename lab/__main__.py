"""Command line of the ICL lab.

    python -m lab EXPERIMENT --train TRAIN.jsonl --test TEST.jsonl [--model M] [--adapter A] [--k K]
                  [--n-test N] [--seeds S ...] [--out DIR] [--backend openai --base-url URL] [...]

With `--backend openai` the model runs on an OpenAI-compatible server that scores prompt tokens
on /v1/completions (this project's app, or vLLM); see `lab.remote`.
EXPERIMENT is one of shots, order, labels, select, finetune (see `lab.runner.EXPERIMENTS`).
Prints the result folder; a bad input prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from bot.backend import add_backend_flags
from lab.config import DTYPES, TASKS, LabConfig
from lab.prompt import STYLES
from lab.runner import EXPERIMENTS


def build_parser() -> argparse.ArgumentParser:
    from bot.cli import DefaultsHelpFormatter, OneLineParser
    from bot.docstrings import field_default, help_texts

    experiments = "\n".join(f"  {name:9} {text}" for name, text in EXPERIMENTS.items())
    parser = OneLineParser(prog="python -m lab", description="In-context learning experiments.",
                           epilog=f"experiments (and the options each reads besides the common ones):\n{experiments}",
                           formatter_class=DefaultsHelpFormatter)
    docs = help_texts(LabConfig)

    def default(field: str):
        return field_default(LabConfig, field)

    parser.add_argument("experiment", choices=list(EXPERIMENTS), help="which experiment to run (listed below)")
    parser.add_argument("--train", required=True, help=docs["train"])
    parser.add_argument("--test", required=True, help=docs["test"])
    parser.add_argument("--model", default=default("model"), help=docs["model"])
    parser.add_argument("--adapter", default=default("adapter"), help=docs["adapter"])
    parser.add_argument("--dtype", default=default("dtype"), choices=DTYPES, help=docs["dtype"])
    parser.add_argument("--k", type=int, default=default("k"), help=docs["k"])
    parser.add_argument("--ks", type=int, nargs="+", default=default("ks"), help=docs["ks"])
    parser.add_argument("--n-test", type=int, default=default("n_test"), help=docs["n_test"])
    parser.add_argument("--seeds", type=int, nargs="+", default=default("seeds"), help=docs["seeds"])
    parser.add_argument("--permutations", type=int, default=default("permutations"), help=docs["permutations"])
    parser.add_argument("--probe-size", type=int, default=default("probe_size"), help=docs["probe_size"])
    parser.add_argument("--style", default=default("style"), choices=STYLES, help=docs["style"])
    parser.add_argument("--calibrate", action="store_true", help=docs["calibrate"])
    parser.add_argument("--task", default=default("task"), choices=TASKS, help=docs["task"])
    parser.add_argument("--embedder", default=default("embedder"), help=docs["embedder"])
    parser.add_argument("--diversity", type=float, default=default("diversity"), help=docs["diversity"])
    parser.add_argument("--batch-size", type=int, default=default("batch_size"), help=docs["batch_size"])
    parser.add_argument("--max-new-tokens", type=int, default=default("max_new_tokens"), help=docs["max_new_tokens"])
    parser.add_argument("--train-steps", type=int, default=default("train_steps"), help=docs["train_steps"])
    parser.add_argument("--train-sizes", type=int, nargs="+", default=default("train_sizes"), help=docs["train_sizes"])
    parser.add_argument("--ood", default=default("ood"), help=docs["ood"])
    parser.add_argument("--out", default=None, help="result folder (default: runs/EXPERIMENT-TIME)")
    add_backend_flags(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> LabConfig:
    """The config the flags describe; an error about a field names its flag."""
    from lab.errors import LabError

    fields = vars(args).copy()
    fields.pop("experiment")
    try:
        return LabConfig(**fields)
    except LabError as error:
        if error.option is None:
            raise
        flag = "--" + error.option.replace("_", "-")
        raise LabError(str(error).replace(error.option, flag, 1), option=error.option) from None


def main(args: argparse.Namespace) -> int:
    from bot.cli import library_output_to_stderr
    from lab.errors import LabError
    from lab.runner import run_experiment

    def report(fraction: float, message: str) -> None:
        print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)

    try:
        with library_output_to_stderr():
            folder = run_experiment(args.experiment, config_from_args(args), progress=report)
    except (LabError, OSError) as error:  # OSError: a data file that cannot be read, say
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
