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
    assert compare(right, wrong) == {"difference": 1.0, "low": 1.0, "high": 1.0, "p": 1 / (uncertainty.DRAWS + 1)}
    assert shown_p(compare(right, wrong)["p"]) == "< 0.001" and shown_p(0.0421) == "0.042"


def test_one_run_gets_wilsons_interval():
    """By hand: 4 of 4 right is 0.510 to 1 (not the bootstrap's 1 to 1); 0 of 4 mirrors it."""
    assert interval(np.ones(4, dtype=bool)) == pytest.approx({"mean": 1.0, "low": 0.5101, "high": 1.0, "runs": 1},
                                                             abs=1e-4)
    assert interval(np.zeros(4, dtype=bool)) == pytest.approx({"mean": 0.0, "low": 0.0, "high": 0.4899, "runs": 1},
                                                              abs=1e-4)


@pytest.mark.parametrize("items, wins, losses", [(40, 3, 0), (40, 8, 2), (100, 10, 3), (200, 30, 15)])
def test_p_of_two_single_runs_is_mcnemars_exact_test(items, wins, losses):
    """Two single runs on the same items: the sign-flip p is McNemar's exact two-sided p (a binomial
    over the items the two sides disagree on), up to the randomness of its draws."""
    a = np.zeros(items, dtype=bool)
    b = np.zeros(items, dtype=bool)
    a[:wins] = True
    b[wins:wins + losses] = True
    a[wins + losses:wins + losses + items // 3] = b[wins + losses:wins + losses + items // 3] = True  # both right
    n = wins + losses
    exact = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n)
    assert compare(a, b)["p"] == pytest.approx(exact, abs=0.025)


def test_several_runs_against_a_brute_force_recount():
    """The bootstrap of three runs redone by hand from the same generator calls: per draw, the items
    repeated as drawn, and the mean over the runs drawn."""
    rows = np.stack([bernoulli(30, p, seed=40 + i) for i, p in enumerate([0.3, 0.6, 0.8])])
    generator = np.random.default_rng(0)
    weights = generator.multinomial(30, np.full(30, 1 / 30), size=uncertainty.DRAWS)
    picks = generator.integers(0, 3, size=(uncertainty.DRAWS, 3))
    means = [np.mean([rows[run, np.repeat(np.arange(30), w)].mean() for run in runs]) for w, runs in zip(weights, picks)]
    got = interval(rows)
    assert got["low"] == pytest.approx(np.quantile(means, 0.025)) and got["high"] == pytest.approx(np.quantile(means, 0.975))
    assert got["mean"] == pytest.approx(rows.mean()) and got["runs"] == 3


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


def test_summarise_and_the_report_section():
    rows = {"gold": bernoulli(40, 0.8, 6)[None], "none": bernoulli(40, 0.4, 7)[None]}
    summary = summarise(rows, [("gold - none", "gold", "none", False)])
    assert [row["name"] for row in summary["intervals"]] == ["gold", "none"]
    assert summary["comparisons"][0]["difference"] == pytest.approx(rows["gold"].mean() - rows["none"].mean())
    text = section(summary)
    assert "| gold | " in text and "| gold - none | +" in text and "2,000 bootstrap draws" in text
    assert summary["items"] == 40 and "rough" not in text and "seeds, redrawing them" not in text
    few = section(summarise({"gold": np.stack([bernoulli(12, 0.5, s) for s in (8, 9)])}, []))
    assert "Only 12 test items: every interval and p here is rough" in few
    assert "With 2 seeds, redrawing them sees only part of the spread" in few


def test_an_interval_that_ends_at_zero_prints_as_zero_not_minus_zero():
    """The draws' means are matrix products: a difference of exactly 0 came out as -5.6e-17, which
    the report printed as "-0.000", as if the interval crossed 0."""
    generator = np.random.default_rng(18)
    one = generator.random((1, 30)) < 0.6
    seeds = np.stack([one[0]] * 3)
    seeds[:, generator.integers(0, 30, 2)] = False
    seeds[1, generator.integers(0, 30, 3)] = ~seeds[1, generator.integers(0, 30, 3)]
    row = compare(one, seeds)
    assert row["low"] == 0.0 and not math.copysign(1, row["low"]) < 0
    assert "| a - b | +0.011 | +0.000 to " in section(summarise({"a": one, "b": seeds}, [("a - b", "a", "b", False)]))
