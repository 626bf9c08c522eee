"""Do demonstration labels need to be right? (Min et al. 2022, "Rethinking the Role of Demonstrations".)

Per seed, one random set of k demonstrations is shown with its gold labels and with labels drawn
uniformly at random from the label set; zero-shot ("none") is the floor. Zero-shot does not
depend on the seed, so it runs once and is listed under every seed.

Given `ood` (a pool from another task or corpus), a fourth condition tests the input distribution:
the random condition's demonstrations with their inputs swapped for k inputs drawn from that pool,
labels and positions unchanged, so `ood` against `random` differs in the inputs alone (Min et al.'s
"OOD inputs" with random labels, drawn there from a news corpus).
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

from lab import plots
from lab.context import LabContext
from lab.demos import random_set
from lab.prompt import Demo
from lab.uncertainty import grouped_hits, summarise
from retrieval.pool import Pool

CONDITIONS = ("gold", "random", "ood", "none")
"""In table order; `ood` only where the run was given out-of-distribution inputs."""


def run(ctx: LabContext) -> dict:
    config = ctx.config
    none = ctx.evaluate(())
    # Random labels come from the label set; for a generation task, from the pool's answers, so
    # that no test answer is ever shown.
    if ctx.data.task == "classify":
        choices = ctx.data.labels
    else:
        choices = sorted({example.output for example in ctx.data.train.examples})
    results = []
    for index, seed in enumerate(config.seeds):
        demos = random_set(ctx.data.train, config.k, seed)
        rng = random.Random(seed)
        shuffled = tuple(Demo(d.input, rng.choice(choices)) for d in demos)
        flipped = sum(a.output != b.output for a, b in zip(demos, shuffled))
        shows = [("gold", demos), ("random", shuffled)]
        if ctx.data.ood is not None:
            shows.append(("ood", _with_inputs(shuffled, ctx.data.ood, seed)))
        for condition, shown in shows:
            outcome = ctx.evaluate(shown)
            results.append({"condition": condition, "seed": seed, "accuracy": outcome["accuracy"],
                            "seconds": outcome["seconds"], "wrong_labels": flipped if condition == "random" else 0,
                            "shown": [asdict(d) for d in shown], "predictions": outcome["predictions"]})
        results.append({"condition": "none", "seed": seed, "accuracy": none["accuracy"], "seconds": none["seconds"],
                        "wrong_labels": 0, "shown": [], "predictions": none["predictions"]})
        ctx.progress((index + 1) / len(config.seeds), f"seed {seed} done")
    return {"results": results, "means": _means(results)}


def _with_inputs(demos: tuple[Demo, ...], ood: Pool, seed: int) -> tuple[Demo, ...]:
    """`demos` with their inputs replaced by distinct inputs drawn from `ood` (seeded), outputs kept."""
    inputs = random.Random(seed).sample([example.input for example in ood.examples], len(demos))
    return tuple(Demo(text, demo.output) for text, demo in zip(inputs, demos))


def _conditions(results: list[dict]) -> list[str]:
    return [c for c in CONDITIONS if any(r["condition"] == c for r in results)]


def _means(results: list[dict]) -> dict:
    return {c: sum(r["accuracy"] for r in results if r["condition"] == c) / sum(r["condition"] == c for r in results)
            for c in _conditions(results)}


COMPARISONS = (
    ("gold - random labels: does label correctness matter?", "gold", "random", True),
    ("gold - none: do demonstrations help at all?", "gold", "none", False),
    ("random - none: do random-label demonstrations still help?", "random", "none", False),
    ("random - ood: does the inputs' distribution matter?", "random", "ood", True),
)


def uncertainty(result: dict, golds: list[str]) -> dict:
    rows = grouped_hits(((r["condition"], r["predictions"]) for r in result["results"]), golds)
    rows["none"] = rows["none"][:1]  # zero-shot ran once; its row is listed under every seed
    return summarise(rows, [pair for pair in COMPARISONS if pair[1] in rows and pair[2] in rows])


def table(result: dict) -> str:
    seeds = list(dict.fromkeys(r["seed"] for r in result["results"]))
    lines = ["| condition | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for condition in _conditions(result["results"]):
        values = [r["accuracy"] for r in result["results"] if r["condition"] == condition]
        lines.append(f"| {condition} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {result['means'][condition]:.3f} |")
    # Random labels can match the gold ones by chance; with none wrong, that seed's two rows are one test.
    wrong = [r["wrong_labels"] for r in result["results"] if r["condition"] == "random"]
    lines.append("| wrong labels in random | " + " | ".join(str(w) for w in wrong) + f" | {sum(wrong) / len(wrong):.1f} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    groups = {c: [r["accuracy"] for r in result["results"] if r["condition"] == c] for c in _conditions(result["results"])}
    plots.bars(groups, path, "gold vs random demonstration labels vs none")
