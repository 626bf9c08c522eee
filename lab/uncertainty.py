"""How far a lab number could move: intervals and paired comparisons of conditions.

An accuracy here depends on two draws: which test items were sampled, and (for random
demonstrations) which demonstration set each seed drew.

- A condition run once gets the Wilson interval of its accuracy (a binomial over the items).
- A condition run under several seeds (or over a sample of orders) gets a bootstrap interval: each
  draw takes the test items with replacement and the runs with replacement, and recomputes the mean.
- A comparison of two conditions bootstraps their difference on the *same* redrawn items (they were
  scored on the same items, so item difficulty cancels), and on the same redrawn seeds where both
  ran under the same seeds (gold and random labels of one seed show the same inputs). Its p-value is
  a sign-flip test over the items: with no difference, each item's difference between the two sides
  (averaged over their runs) is as likely negative as positive. For one run a side that is McNemar's
  test, drawn at random instead of counted.

So the interval covers other test items and other demonstration sets, while p asks only whether
these sets differ on these items. With few seeds the bootstrap understates the spread between sets
(with two, it sees half of it), and `section` says so.

    hits_a = hits(predictions_a, golds)                   # (items,) bool
    interval(np.stack([hits_a, ...]))                     # {"mean", "low", "high", "runs"}: a row per seed
    compare(gold_rows, random_rows, paired_runs=True)     # {"difference", "low", "high", "p"}

No model here; numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from lab.stats import matches

DRAWS = 2000
"""Bootstrap and sign-flip draws; p can be no smaller than 1/(DRAWS + 1), shown as "< 0.001"."""
LEVEL = 0.95
FEW_ITEMS = 30
"""Below this many test items, `section` says the intervals and p are rough."""
FEW_RUNS = 5
"""Below this many seeds (but more than one), `section` says the spread between sets is understated."""


def hits(predictions: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """Per item, whether the prediction matches the gold answer as `lab.stats.accuracy` counts it."""
    return np.array(matches(predictions, golds), dtype=bool)


def grouped_hits(runs: Iterable[tuple[str, Sequence[str]]], golds: Sequence[str]) -> dict[str, np.ndarray]:
    """(condition, predictions) pairs as {condition: runs x items hits}, runs in the order given."""
    grouped: dict[str, list[np.ndarray]] = {}
    for name, predictions in runs:
        grouped.setdefault(name, []).append(hits(predictions, golds))
    return {name: np.stack(rows) for name, rows in grouped.items()}


def _rows(runs) -> np.ndarray:
    array = np.asarray(runs, dtype=float)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected runs x items hits, got shape {np.shape(runs)}")
    return array  # (runs, items)


def _weights(items: int, generator: np.random.Generator) -> np.ndarray:
    return generator.multinomial(items, np.full(items, 1 / items), size=DRAWS)  # (draws, items)


def _picks(runs: int, generator: np.random.Generator) -> np.ndarray | None:
    return generator.integers(0, runs, size=(DRAWS, runs)) if runs > 1 else None  # (draws, runs)


def _draw_means(rows: np.ndarray, item_weights: np.ndarray, run_picks: np.ndarray | None) -> np.ndarray:
    """Mean accuracy per draw: `item_weights` (draws, items) counts each item's copies, `run_picks`
    (draws, picks) the runs drawn (None: the one run)."""
    per_run = rows @ item_weights.T / item_weights.sum(axis=1)  # (runs, draws)
    if run_picks is None:
        return per_run[0]
    return np.take_along_axis(per_run.T, run_picks, axis=1).mean(axis=1)


def _bounds(values: np.ndarray) -> tuple[float, float]:
    """The interval's ends, rounded to 12 decimals: the draws' means are matrix products, so a
    difference that is exactly 0 comes out as +-1e-17 and would print as "-0.000"."""
    low, high = np.quantile(values, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return round(float(low), 12) + 0.0, round(float(high), 12) + 0.0  # + 0.0 makes -0.0 plain 0.0


def wilson(successes: float, n: int) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion at LEVEL."""
    z = float(_normal_quantile((1 + LEVEL) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _normal_quantile(q: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(q)


def interval(runs, seed: int = 0) -> dict:
    """Mean accuracy of `runs` (runs x items hits, or one run's items) and its interval: Wilson's
    for one run of right/wrong items, else the bootstrap's."""
    rows = _rows(runs)
    if rows.shape[0] == 1 and np.isin(rows, (0.0, 1.0)).all():
        low, high = wilson(rows.sum(), rows.shape[1])
    else:
        generator = np.random.default_rng(seed)
        weights = _weights(rows.shape[1], generator)
        low, high = _bounds(_draw_means(rows, weights, _picks(rows.shape[0], generator)))
    return {"mean": float(rows.mean()), "low": low, "high": high, "runs": rows.shape[0]}


def sign_flip_p(differences: np.ndarray, seed: int = 0) -> float:
    """Two-sided p that per-item `differences` are symmetric around 0: the share of random sign
    flips whose mean is at least as far from 0 as the observed one (counting the observed one)."""
    observed = abs(differences.mean())
    if observed == 0:
        return 1.0
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(DRAWS, differences.size))
    flipped = np.abs(signs @ differences) / differences.size
    return float((np.sum(flipped >= observed - 1e-12) + 1) / (DRAWS + 1))


def compare(first, second, paired_runs: bool = False, seed: int = 0) -> dict:
    """mean(first) - mean(second) over the same test items, with its bootstrap interval and p.

    `paired_runs`: row i of both came from the same seed, so a draw takes the same seeds for both;
    otherwise each side's runs are drawn on their own (kNN's one run against random's seeds).
    """
    a, b = _rows(first), _rows(second)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"conditions compared on different items: {a.shape[1]} and {b.shape[1]}")
    if paired_runs and a.shape[0] != b.shape[0]:
        raise ValueError(f"paired runs need as many runs on each side, got {a.shape[0]} and {b.shape[0]}")
    generator = np.random.default_rng(seed)
    weights = _weights(a.shape[1], generator)
    picks_a = _picks(a.shape[0], generator)
    picks_b = picks_a if paired_runs else _picks(b.shape[0], generator)
    low, high = _bounds(_draw_means(a, weights, picks_a) - _draw_means(b, weights, picks_b))
    per_item = a.mean(axis=0) - b.mean(axis=0)  # (items,)
    difference = round(float(per_item.mean()), 12) + 0.0  # as `_bounds` rounds: no "-0.000"
    return {"difference": difference, "low": low, "high": high, "p": sign_flip_p(per_item, seed)}


def summarise(rows: dict[str, np.ndarray], pairs: Sequence[tuple[str, str, str, bool]]) -> dict:
    """Intervals for every condition in `rows` (name: runs x items hits) and the comparisons in
    `pairs`: (what the comparison shows, first condition, second condition, paired runs)."""
    return {"items": int(_rows(next(iter(rows.values()))).shape[1]),
            "intervals": [{"name": name, **interval(runs)} for name, runs in rows.items()],
            "comparisons": [{"name": shown, "first": first, "second": second,
                             **compare(rows[first], rows[second], paired_runs=paired)}
                            for shown, first, second, paired in pairs]}


def shown_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def section(uncertainty: dict) -> str:
    """The report's Markdown for an experiment's `{"items", "intervals", "comparisons"}`."""
    level = f"{LEVEL:.0%}"
    lines = [f"## How sure\n\n{level} intervals: Wilson's for a condition run once; for one run under several "
             f"seeds or orders, and for every difference, {DRAWS:,} bootstrap draws that redraw the test items "
             "(the same ones for both sides of a comparison) and those runs. An interval that spans 0 means this "
             "run cannot tell the two apart. p: a sign-flip test over the items, for these demonstration sets "
             "only; a small p with an interval that spans 0 says these sets differ, while other sets may not."]
    lines += _caveats(uncertainty)
    lines += ["", f"| condition | accuracy | {level} interval |", "|---|---|---|"]
    lines += [f"| {row['name']} | {row['mean']:.3f} | {row['low']:.3f} to {row['high']:.3f} |"
              for row in uncertainty["intervals"]]
    if uncertainty["comparisons"]:
        lines += ["", f"| comparison | difference | {level} interval | p |", "|---|---|---|---|"]
        lines += [f"| {row['name']} | {row['difference']:+.3f} | {row['low']:+.3f} to {row['high']:+.3f} | "
                  f"{shown_p(row['p'])} |" for row in uncertainty["comparisons"]]
    return "\n".join(lines)


def _caveats(uncertainty: dict) -> list[str]:
    caveats = []
    items = uncertainty.get("items")  # results from before 2026-11-28 do not record it
    if items is not None and items < FEW_ITEMS:
        caveats.append(f"\nOnly {items} test items: every interval and p here is rough; use {FEW_ITEMS} or more.")
    few = sorted({row["runs"] for row in uncertainty["intervals"] if 1 < row.get("runs", 1) < FEW_RUNS})
    if few:
        caveats.append(f"\nWith {' or '.join(map(str, few))} seeds, redrawing them sees only part of the spread "
                       "between demonstration sets (half of it with two): the intervals of those conditions are "
                       f"too narrow. Use {FEW_RUNS} or more seeds to read them.")
    return caveats
