"""Order sensitivity: the same demonstrations in every order (or a sample), and Lu et al.'s remedy.

For each seed a random set of k demonstrations is drawn; every chosen permutation of it is scored
on the test items. Then GlobalE and LocalE (see `lab.entropy`) pick an order from a probe set the
model wrote itself, and the chosen orders' accuracies are set against the permutation mean. Where
several orders tie for a criterion's best score, the criterion cannot choose among them: its pick
counts as their mean (what a random choice among them scores on average), never as the first of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lab import plots
from lab.context import LabContext
from lab.demos import random_set
from lab.entropy import probe_inputs, rank_orders
from lab.permutations import choose_orders
from lab.stats import summary
from lab.uncertainty import hits, summarise


def run(ctx: LabContext) -> dict:
    config = ctx.config
    orders = choose_orders(config.k, config.permutations, seed=config.seeds[0])
    probing = ctx.data.task == "classify"
    steps = len(orders) + probing  # per set: each order, then the probes (about one order's work)
    sets, everything = [], []
    for set_index, seed in enumerate(config.seeds):
        demos = random_set(ctx.data.train, config.k, seed)
        permutations = []
        for order_index, order in enumerate(orders):
            result = ctx.evaluate(tuple(demos[i] for i in order))
            permutations.append({"order": list(order), "accuracy": result["accuracy"], "seconds": result["seconds"],
                                 "predictions": result["predictions"]})
            done = (set_index * steps + order_index + 1) / (len(config.seeds) * steps)
            ctx.progress(done, f"set {seed}: order {order_index + 1}/{len(orders)}")
        entry = {"seed": seed, "demos": [asdict(d) for d in demos], "permutations": permutations,
                 **summary([p["accuracy"] for p in permutations])}
        if probing:
            entry["lu"] = _lu_remedy(ctx, demos, orders, permutations, seed)
        sets.append(entry)
        everything += [{"set": seed, **p} for p in permutations]
    return {"permutations": everything, **summary([p["accuracy"] for p in everything]),
            "orders_per_set": len(orders), "sets": sets}


def _lu_remedy(ctx: LabContext, demos, orders, permutations: list[dict], seed: int) -> dict:
    probes = probe_inputs(ctx.predictor, demos, ctx.config.probe_size, seed)
    ranking = rank_orders(ctx.predictor, demos, orders, probes)
    accuracy = {tuple(p["order"]): p["accuracy"] for p in permutations}

    def pick(tied: list[list[int]]) -> dict:
        """`order`: the first of the tied orders (all of them in `orders`); `accuracy`: their mean."""
        return {"order": tied[0], "orders": tied, "tied": len(tied),
                "accuracy": sum(accuracy[tuple(order)] for order in tied) / len(tied)}

    return {
        "probes": probes,
        "globale_scores": ranking["globale"],
        "locale_scores": ranking["locale"],
        "globale": pick(ranking["globale_orders"]),
        "locale": pick(ranking["locale_orders"]),
        "permutation_mean": sum(accuracy.values()) / len(accuracy),
    }


def uncertainty(result: dict, golds: list[str]) -> dict:
    """Per set, the mean accuracy over its orders, and the GlobalE and LocalE picks against it: does
    the pick beat a random order by more than the test sample's noise? Where every order was scored,
    their mean is exact (only the items are redrawn); where a sample was, the orders are redrawn too."""
    rows, pairs = {}, []
    for entry in result["sets"]:
        orders = {tuple(p["order"]): hits(p["predictions"], golds) for p in entry["permutations"]}
        name = f"set {entry['seed']}, all orders"
        every = np.stack(list(orders.values()))
        rows[name] = every.mean(axis=0) if len(orders) == math.factorial(len(entry["demos"])) else every
        for criterion, shown in (("globale", "GlobalE"), ("locale", "LocalE")):
            if "lu" in entry:
                pick = f"set {entry['seed']}, {shown} pick"
                chosen = entry["lu"][criterion]
                tied = chosen.get("orders", [chosen["order"]])  # results from before 2026-11-28 kept the first only
                rows[pick] = np.stack([orders[tuple(order)] for order in tied]).mean(axis=0)[None]
                pairs.append((f"set {entry['seed']}: {shown} pick - all orders", pick, name, False))
    return summarise(rows, pairs)


def table(result: dict) -> str:
    lines = ["| set (seed) | orders | mean | std | min | max | GlobalE pick | LocalE pick |",
             "|---|---|---|---|---|---|---|---|"]
    ties = False
    for entry in result["sets"]:
        lu = entry.get("lu")
        picks = " | ".join(_pick(lu[name]) for name in ("globale", "locale")) if lu else "– | –"
        ties = ties or bool(lu and max(lu["globale"].get("tied", 1), lu["locale"].get("tied", 1)) > 1)
        lines.append(f"| {entry['seed']} | {len(entry['permutations'])} | {entry['mean']:.3f} | {entry['std']:.3f} "
                     f"| {entry['min']:.3f} | {entry['max']:.3f} | {picks} |")
    lines.append(f"| all | {len(result['permutations'])} | {result['mean']:.3f} | {result['std']:.3f} "
                 f"| {result['min']:.3f} | {result['max']:.3f} | | |")
    if ties:
        lines.append("\n\"mean of n tied\": n orders share the criterion's best score on the probes, so it cannot "
                     "choose among them; the accuracy shown is theirs on average, what a random choice among them "
                     "would score. More or longer probes (--probe-size) may separate them.")
    return "\n".join(lines)


def _pick(choice: dict) -> str:
    tied = choice.get("tied", 1)  # absent in results written before ties were counted
    if tied > 1 and "orders" not in choice:  # written before ties were averaged: the first tied order's accuracy
        return f"{choice['accuracy']:.3f} (first of {tied} tied)"
    return f"{choice['accuracy']:.3f}" + (f" (mean of {tied} tied)" if tied > 1 else "")


def plot(result: dict, path: Path) -> None:
    groups = {f"set {e['seed']}": [p["accuracy"] for p in e["permutations"]] for e in result["sets"]}
    marks = {f"set {e['seed']}": {"GlobalE": e["lu"]["globale"]["accuracy"], "LocalE": e["lu"]["locale"]["accuracy"]}
             for e in result["sets"] if "lu" in e}
    plots.box(groups, path, f"accuracy over {result['orders_per_set']} orders per demonstration set", marks=marks)
