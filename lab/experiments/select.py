"""Which demonstrations: kNN (Liu et al. 2021) vs MMR vs random, at the same k.

Random draws one set per seed, shared by all test items; kNN and MMR pick per test item from an
index of the pool (most similar last) and do not depend on the seed, so they run once (seed null).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from lab import plots
from lab.context import LabContext
from lab.demos import shown_per_item
from lab.uncertainty import grouped_hits, summarise

SELECTIONS = ("knn", "mmr", "random")


def run(ctx: LabContext) -> dict:
    config = ctx.config
    results = []
    for index, selection in enumerate(SELECTIONS):
        seeds = config.seeds if selection == "random" else [None]
        for seed in seeds:
            demos = [ctx.chooser.for_query(item.input, config.k, selection, seed or 0) for item in ctx.data.test]
            outcome = ctx.evaluate(demos)
            # random shows one set to every item; kNN and MMR one set per item, as the prompt lists them
            shown = [asdict(d) for d in demos[0]] if selection == "random" else shown_per_item(demos)
            results.append({"selection": selection, "seed": seed, "accuracy": outcome["accuracy"],
                            "predictions": outcome["predictions"], "seconds": outcome["seconds"], "shown": shown})
        ctx.progress((index + 1) / len(SELECTIONS), f"{selection} done")
    return {"results": results, "means": _means(results)}


def _means(results: list[dict]) -> dict:
    return {s: sum(r["accuracy"] for r in results if r["selection"] == s) / sum(r["selection"] == s for r in results)
            for s in SELECTIONS}


SHOWN = {"knn": "kNN", "mmr": "MMR", "random": "random"}
COMPARISONS = (
    ("kNN - random", "kNN", "random", False),
    ("MMR - random", "MMR", "random", False),
    ("kNN - MMR", "kNN", "MMR", False),
)


def uncertainty(result: dict, golds: list[str]) -> dict:
    return summarise(grouped_hits(((SHOWN[r["selection"]], r["predictions"]) for r in result["results"]), golds),
                     COMPARISONS)


def table(result: dict) -> str:
    lines = ["| selection | runs | accuracy (mean) | values |", "|---|---|---|---|"]
    for selection in SELECTIONS:
        values = [r["accuracy"] for r in result["results"] if r["selection"] == selection]
        lines.append(f"| {selection} | {len(values)} | {result['means'][selection]:.3f} | "
                     + ", ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    groups = {s: [r["accuracy"] for r in result["results"] if r["selection"] == s] for s in SELECTIONS}
    plots.bars(groups, path, "demonstration selection at the same k")
