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
    parser = argparse.ArgumentParser(prog="python -m lab", description="In-context learning experiments.")
    parser.add_argument("experiment", choices=list(EXPERIMENTS))
    parser.add_argument("--train", required=True, help="pool JSONL the demonstrations come from")
    parser.add_argument("--test", required=True, help="labelled test JSONL; its outputs are the label set")
    parser.add_argument("--model", default="default",
                        help="model spec (with --backend openai: the model the server runs, for its tokenizer)")
    parser.add_argument("--adapter", default=None,
                        help="LoRA adapter folder applied to the model (with --backend openai: a model name on the server)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 4, 8], help="shot counts (shots)")
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--permutations", type=int, default=24, help="orders per set (order)")
    parser.add_argument("--probe-size", type=int, default=16, help="GlobalE/LocalE probe inputs (order)")
    parser.add_argument("--style", default="plain", choices=STYLES)
    parser.add_argument("--calibrate", action="store_true", help="contextual calibration (Zhao et al. 2021)")
    parser.add_argument("--task", default="auto", choices=TASKS)
    parser.add_argument("--embedder", default="default", help="embedder for kNN/MMR ('hash': no model)")
    parser.add_argument("--diversity", type=float, default=0.5, help="MMR trade-off (select)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=200, help="LoRA steps (finetune)")
    parser.add_argument("--out", default=None, help="result folder (default: runs/EXPERIMENT-TIME)")
    add_backend_flags(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> LabConfig:
    fields = vars(args).copy()
    fields.pop("experiment")
    return LabConfig(**fields)


def main(args: argparse.Namespace) -> int:
    from lab.errors import LabError
    from lab.runner import run_experiment

    def report(fraction: float, message: str) -> None:
        print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)

    try:
        folder = run_experiment(args.experiment, config_from_args(args), progress=report)
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
