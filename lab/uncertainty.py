"""How far a lab number could move: bootstrap intervals and paired comparisons of conditions.

An accuracy here depends on two draws: which test items were sampled, and (for random
demonstrations) which demonstration set each seed drew. The bootstrap redraws both: each draw
takes the test items with replacement and, for a condition run under several seeds (or over
several orders), its runs with replacement, then recomputes the mean accuracy. Two conditions are
compared on the *same* redrawn items (they were scored on the same items, so item difficulty
cancels), and on the same redrawn seeds where both ran under the same seeds (gold and random labels
of one seed show the same inputs).

    hits_a = hits(predictions_a, golds)             # (items,) bool
    interval(np.stack([hits_a, ...]))               # {"mean", "low", "high"}: one row per seed
    compare(gold_rows, random_rows, paired_runs=True)  # {"difference", "low", "high", "p"}

The p-value is the bootstrap's two-sided one: twice the share of draws on the far side of zero.
It is a guide for a few hundred items, not a correction for testing many comparisons at once.
No model here; numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lab.stats import normalise_answer

DRAWS = 2000
"""Bootstrap draws per interval; a p below 1/DRAWS shows as "< 0.001"."""
LEVEL = 0.95


def hits(predictions: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """Per item, whether the prediction matches the gold answer as `lab.stats.accuracy` counts it."""
    if len(predictions) != len(golds):
        raise ValueError(f"hits needs as many predictions as golds, got {len(predictions)} and {len(golds)}")
    return np.array([normalise_answer(p) == normalise_answer(g) for p, g in zip(predictions, golds)], dtype=bool)


def _rows(runs) -> np.ndarray:
    array = np.asarray(runs, dtype=float)
    array = array[None, :] if array.ndim == 1 else array
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected runs x items hits, got shape {np.shape(runs)}")
    return array  # (runs, items)


def _draw_means(rows: np.ndarray, item_weights: np.ndarray, run_picks: np.ndarray | None) -> np.ndarray:
    """Mean accuracy per draw: `item_weights` (draws, items) counts each item's copies, `run_picks`
    (draws, picks) the runs drawn (None: the one run)."""
    per_run = rows @ item_weights.T / item_weights.sum(axis=1)  # (runs, draws)
    if run_picks is None:
        return per_run[0]
    return np.take_along_axis(per_run.T, run_picks, axis=1).mean(axis=1)


def _weights(items: int, generator: np.random.Generator) -> np.ndarray:
    return generator.multinomial(items, np.full(items, 1 / items), size=DRAWS)  # (draws, items)


def _picks(runs: int, generator: np.random.Generator) -> np.ndarray | None:
    return generator.integers(0, runs, size=(DRAWS, runs)) if runs > 1 else None  # (draws, runs)


def _bounds(values: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(values, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def interval(runs, seed: int = 0) -> dict:
    """Mean accuracy of `runs` (runs x items hits, or one run's items) and its bootstrap interval."""
    rows = _rows(runs)
    generator = np.random.default_rng(seed)
    weights = _weights(rows.shape[1], generator)
    low, high = _bounds(_draw_means(rows, weights, _picks(rows.shape[0], generator)))
    return {"mean": float(rows.mean()), "low": low, "high": high}


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
    differences = _draw_means(a, weights, picks_a) - _draw_means(b, weights, picks_b)
    low, high = _bounds(differences)
    far_side = min(np.sum(differences <= 0), np.sum(differences >= 0))
    return {"difference": float(a.mean() - b.mean()), "low": low, "high": high,
            "p": min(1.0, 2 * float(far_side) / DRAWS)}


def summarise(rows: dict[str, np.ndarray], pairs: Sequence[tuple[str, str, str, bool]]) -> dict:
    """Intervals for every condition in `rows` (name: runs x items hits) and the comparisons in
    `pairs`: (what the comparison shows, first condition, second condition, paired runs)."""
    return {"intervals": [{"name": name, **interval(runs)} for name, runs in rows.items()],
            "comparisons": [{"name": shown, "first": first, "second": second,
                             **compare(rows[first], rows[second], paired_runs=paired)}
                            for shown, first, second, paired in pairs]}


def shown_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def section(uncertainty: dict) -> str:
    """The report's Markdown for an experiment's `{"intervals": [...], "comparisons": [...]}`."""
    lines = [f"## How sure\n\n{LEVEL:.0%} intervals from {DRAWS:,} bootstrap draws that redraw the test items and, "
             "where a condition ran under several seeds or orders, those runs. A comparison redraws the same "
             "items for both sides. An interval that spans 0 means this run cannot tell the two apart.\n",
             "| condition | accuracy | 95% interval |", "|---|---|---|"]
    lines += [f"| {row['name']} | {row['mean']:.3f} | {row['low']:.3f} to {row['high']:.3f} |"
              for row in uncertainty["intervals"]]
    if uncertainty["comparisons"]:
        lines += ["", "| comparison | difference | 95% interval | p |", "|---|---|---|---|"]
        lines += [f"| {row['name']} | {row['difference']:+.3f} | {row['low']:+.3f} to {row['high']:+.3f} | "
                  f"{shown_p(row['p'])} |" for row in uncertainty["comparisons"]]
    return "\n".join(lines)
