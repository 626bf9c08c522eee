"""Accuracy against the number of demonstrations, random vs kNN selection.

k = 0 (zero-shot) is the same prompt for both selections, so it runs once and is listed under
each. Random selection runs once per seed (one set shared by all test items); the sets are nested:
each seed draws one set for the largest k, and a smaller k shows its first k demonstrations, so
along a curve demonstrations are added rather than drawn anew. kNN does not depend on the seed and
runs once per k (seed null).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from lab import plots
from lab.context import LabContext
from lab.demos import shown_per_item
from lab.uncertainty import grouped_hits, summarise

SELECTIONS = ("random", "knn")
SHOWN = {"random": "random", "knn": "kNN"}


def run(ctx: LabContext) -> dict:
    config = ctx.config
    largest = {seed: ctx.chooser.for_query("", max(config.ks), "random", seed) for seed in config.seeds}
    results = []
    for index, k in enumerate(config.ks):
        if k == 0:
            outcome = ctx.evaluate(())
            results += [_row(0, s, None, outcome) for s in SELECTIONS]
            continue
        for seed in config.seeds:
            demos = largest[seed][:k]
            results.append({**_row(k, "random", seed, ctx.evaluate(demos)), "shown": [asdict(d) for d in demos]})
        per_item = [ctx.chooser.for_query(item.input, k, "knn", 0) for item in ctx.data.test]
        results.append({**_row(k, "knn", None, ctx.evaluate(per_item)), "shown": shown_per_item(per_item)})
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


def uncertainty(result: dict, golds: list[str]) -> dict:
    """Every (k, selection) with its interval; kNN against random at each k, and each selection's
    largest k against zero-shot where the run had k=0 (listed once: both selections share it)."""
    kept = [row for row in result["results"] if row["k"] or row["selection"] == SELECTIONS[0]]
    rows = grouped_hits(((f"{SHOWN[row['selection']]}, k={row['k']}" if row["k"] else "k=0", row["predictions"])
                         for row in kept), golds)
    ks = sorted({row["k"] for row in result["results"] if row["k"] > 0})
    pairs = [(f"kNN - random, k={k}", f"kNN, k={k}", f"random, k={k}", False) for k in ks]
    if ks and "k=0" in rows:
        pairs += [(f"{SHOWN[s]}, k={ks[-1]} - zero-shot", f"{SHOWN[s]}, k={ks[-1]}", "k=0", False) for s in SELECTIONS]
    return summarise(rows, pairs)


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
