"""Benchmark the lab's label scorer: cached and batched vs the naive per-prompt loop.

    python -m bench lab                                  # 4-shot SST-2, 24 orders x 100 items (~3 min)
    python -m bench lab --naive-items 10 --n-test 20     # quicker

The workload is the order experiment's: one random k-shot set from the train pool in every
permutation (all of them up to `--permutations`), each followed by the same test items. The cached
scorer runs all of it; the naive loop (one forward pass per prompt and label, `lab.naive`) runs
only the first `--naive-items` prompts, and its time is extrapolated per prompt to the whole
workload. On that subset both must give the same predictions; the largest log-probability
difference is printed too. Nothing is asserted; the tests check correctness, this only measures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sst2"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench lab", description=__doc__.split("\n")[0])
    parser.add_argument("--train", default=str(DATA / "train.jsonl"))
    parser.add_argument("--test", default=str(DATA / "test.jsonl"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--permutations", type=int, default=24)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--naive-items", type=int, default=24, help="prompts the naive loop runs (extrapolated)")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser


def workload(args):
    """(loaded model, prompts, continuations, labels) of the order experiment's scoring."""
    from bot.models import load_model
    from lab.data import load_data
    from lab.demos import random_set
    from lab.permutations import choose_orders
    from lab.prompt import PromptFormat

    data = load_data(args.train, args.test, args.n_test, "classify")
    loaded = load_model(args.model, dtype="float32")
    demos = random_set(data.train, args.k, seed=0)
    fmt = PromptFormat("plain")
    prompts = [
        fmt.build(loaded.tokenizer, tuple(demos[i] for i in order), item.input)
        for order in choose_orders(args.k, args.permutations) for item in data.test
    ]
    return loaded, prompts, [fmt.continuation(label) for label in data.labels], data.labels


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from lab.naive import naive_score
    from lab.scorer import CachedScorer

    args = build_parser().parse_args(argv)
    loaded, prompts, continuations, labels = workload(args)
    subset = prompts[: args.naive_items]
    print(f"model {loaded.name} (float32), {torch.get_num_threads()} threads; labels: {', '.join(labels)}")
    print(f"workload: {len(prompts)} prompts, {len(continuations)} labels ({args.k}-shot, {len(prompts) // args.n_test} orders x {args.n_test} items)")

    naive_score(loaded.model, loaded.tokenizer, prompts[:1], continuations)  # warm-up, not timed
    start = time.perf_counter()
    cached = CachedScorer(loaded.model, loaded.tokenizer, args.batch_size).score(prompts, continuations)
    cached_s = time.perf_counter() - start
    start = time.perf_counter()
    naive = naive_score(loaded.model, loaded.tokenizer, subset, continuations)
    naive_s = (time.perf_counter() - start) / len(subset) * len(prompts)

    same = bool((cached[: len(subset)].argmax(1) == naive.argmax(1)).all())
    diff = float(np.abs(cached[: len(subset)] - naive).max())
    print(f"cached+batched: {cached_s:8.1f} s for all {len(prompts)} prompts ({cached_s / len(prompts) * 1000:.1f} ms/prompt)")
    print(f"naive loop:     {naive_s:8.1f} s extrapolated from {len(subset)} prompts "
          f"({naive_s / len(prompts) * 1000:.1f} ms/prompt)")
    print(f"speed-up: {naive_s / cached_s:.1f}x; predictions identical on the {len(subset)} naive prompts: {same}; "
          f"max |logprob difference|: {diff:.2e}")
    return 0
