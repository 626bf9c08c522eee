"""Bootstrap intervals and paired comparisons, against the normal approximation and by hand."""

import math

import numpy as np
import pytest

from lab import uncertainty
from lab.uncertainty import compare, hits, interval, section, shown_p, summarise


def bernoulli(n: int, p: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < p


def test_hits_count_as_accuracy_does():
    assert hits(["Positive.", "negative", " positive"], ["positive", "positive", "positive"]).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="as many predictions as golds"):
        hits(["a"], ["a", "b"])


def test_one_run_interval_matches_the_normal_approximation():
    """For one run of n items the bootstrap's interval is close to mean ± 1.96 sqrt(p(1-p)/n)."""
    row = bernoulli(400, 0.7, seed=1)
    p = row.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / row.size)
    got = interval(row)
    assert got["mean"] == pytest.approx(p)
    assert got["low"] == pytest.approx(p - half, abs=0.01) and got["high"] == pytest.approx(p + half, abs=0.01)


def test_paired_difference_matches_the_paired_normal_approximation():
    """b is a with 30 of 400 items flipped: a paired interval is about mean(d) ± 1.96 sd(d)/sqrt(n),
    far narrower than the two accuracies' own intervals, which an unpaired bootstrap would combine."""
    a = bernoulli(400, 0.6, seed=2)
    b = a.copy()
    b[:30] = ~b[:30]
    d = a.astype(float) - b.astype(float)
    half = 1.96 * d.std() / math.sqrt(d.size)
    got = compare(a, b)
    assert got["difference"] == pytest.approx(d.mean())
    assert got["low"] == pytest.approx(d.mean() - half, abs=0.01)
    assert got["high"] == pytest.approx(d.mean() + half, abs=0.01)
    unpaired = math.sqrt(a.mean() * (1 - a.mean()) / a.size + b.mean() * (1 - b.mean()) / b.size)
    assert got["high"] - got["low"] < 0.5 * 2 * 1.96 * unpaired  # sanity: pairing is what makes it narrow


def test_same_predictions_differ_by_nothing_and_opposite_ones_surely():
    row = bernoulli(50, 0.5, seed=3)
    assert compare(row, row) == {"difference": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
    right, wrong = np.ones(50, dtype=bool), np.zeros(50, dtype=bool)
    assert compare(right, wrong) == {"difference": 1.0, "low": 1.0, "high": 1.0, "p": 0.0}
    assert shown_p(0.0) == "< 0.001" and shown_p(0.0421) == "0.042"


def test_seeds_widen_the_interval_by_their_own_spread():
    """Five seeds whose runs differ a lot but each score every item alike: the items alone would
    give a narrow interval; redrawing the seeds gives about the seed means' own spread."""
    items = 300
    means = np.array([0.4, 0.5, 0.6, 0.7, 0.8])
    rows = np.stack([bernoulli(items, m, seed=10 + i) for i, m in enumerate(means)])
    got = interval(rows)
    pooled = interval(rows.mean(axis=0))  # the same hits, seeds averaged first: items only
    assert got["mean"] == pytest.approx(pooled["mean"])
    assert got["high"] - got["low"] > 2 * (pooled["high"] - pooled["low"])
    seed_means = rows.mean(axis=1)
    half = 1.96 * seed_means.std() / math.sqrt(len(seed_means))
    assert got["high"] - got["low"] == pytest.approx(2 * half, rel=0.35)  # 5 seeds: a coarse bootstrap


def test_paired_seeds_cancel_what_the_two_sides_share():
    """gold and random of one seed share the seed's demonstration inputs: where each seed moves both
    sides alike, pairing the seeds removes that spread; drawing them apart does not."""
    base = np.stack([bernoulli(200, m, seed=20 + i) for i, m in enumerate([0.3, 0.5, 0.7, 0.9])])
    other = base.copy()
    other[:, :10] = False  # the same as base but for ten items per seed
    paired, apart = compare(base, other, paired_runs=True), compare(base, other)
    assert paired["difference"] == apart["difference"] == pytest.approx(base[:, :10].mean() * 10 / 200)
    assert paired["high"] - paired["low"] < 0.5 * (apart["high"] - apart["low"])
    with pytest.raises(ValueError, match="as many runs on each side"):
        compare(base, other[:2], paired_runs=True)
    with pytest.raises(ValueError, match="different items"):
        compare(base, other[:, :5])


def test_p_is_twice_the_far_side_of_the_draws():
    """The p-value against a brute-force recount of the same draws, redrawn here from the same
    generator calls as `compare` makes for one run per side."""
    a, b = bernoulli(60, 0.6, seed=4), bernoulli(60, 0.5, seed=5)
    generator = np.random.default_rng(0)
    differences = []
    for weights in generator.multinomial(60, np.full(60, 1 / 60), size=uncertainty.DRAWS):
        picked = np.repeat(np.arange(60), weights)
        differences.append(a[picked].mean() - b[picked].mean())
    differences = np.array(differences)
    far = min((differences <= 0).sum(), (differences >= 0).sum())
    got = compare(a, b)
    assert got["p"] == pytest.approx(min(1.0, 2 * far / uncertainty.DRAWS))
    assert got["low"] == pytest.approx(np.quantile(differences, 0.025))
    assert 0 < got["p"] < 1  # sanity: this case is neither sure nor hopeless


def test_summarise_and_the_report_section():
    rows = {"gold": bernoulli(40, 0.8, 6)[None], "none": bernoulli(40, 0.4, 7)[None]}
    summary = summarise(rows, [("gold - none", "gold", "none", False)])
    assert [row["name"] for row in summary["intervals"]] == ["gold", "none"]
    assert summary["comparisons"][0]["difference"] == pytest.approx(rows["gold"].mean() - rows["none"].mean())
    text = section(summary)
    assert "| gold | " in text and "| gold - none | +" in text and "95% intervals from 2,000" in text
