"""Accuracy against the number of demonstrations, random vs kNN selection.

k = 0 (zero-shot) is the same prompt for both selections, so it runs once and is listed under
each. Random selection runs once per seed (one set shared by all test items); kNN does not
depend on the seed and runs once per k (seed null).
"""

from __future__ import annotations

from pathlib import Path

from lab import plots
from lab.context import LabContext

SELECTIONS = ("random", "knn")


def run(ctx: LabContext) -> dict:
    config = ctx.config
    results = []
    for index, k in enumerate(config.ks):
        if k == 0:
            outcome = ctx.evaluate(())
            results += [_row(0, s, None, outcome) for s in SELECTIONS]
            continue
        for seed in config.seeds:
            demos = ctx.chooser.for_query("", k, "random", seed)
            results.append(_row(k, "random", seed, ctx.evaluate(demos)))
        per_item = [ctx.chooser.for_query(item.input, k, "knn", 0) for item in ctx.data.test]
        results.append(_row(k, "knn", None, ctx.evaluate(per_item)))
        ctx.progress((index + 1) / len(config.ks), f"k={k} done")
    return {"results": results}


def _row(k: int, selection: str, seed: int | None, outcome: dict) -> dict:
    return {"k": k, "selection": selection, "seed": seed, "accuracy": outcome["accuracy"], "seconds": outcome["seconds"],
            "predictions": outcome["predictions"]}


def _series(result: dict) -> dict[str, dict[int, list[float]]]:
    series: dict[str, dict[int, list[float]]] = {s: {} for s in SELECTIONS}
    for row in result["results"]:
        series[row["selection"]].setdefault(row["k"], []).append(row["accuracy"])
    return series


def table(result: dict) -> str:
    series = _series(result)
    ks = sorted(series["random"])
    lines = ["| k | random (mean, min-max) | kNN |", "|---|---|---|"]
    for k in ks:
        rand = series["random"][k]
        lines.append(f"| {k} | {sum(rand) / len(rand):.3f} ({min(rand):.3f}-{max(rand):.3f}) | "
                     f"{sum(series['knn'][k]) / len(series['knn'][k]):.3f} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plots.curves(_series(result), path, "accuracy against the number of demonstrations", "k (demonstrations)")
