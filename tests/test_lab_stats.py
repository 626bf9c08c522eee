"""Permutations, accuracy, summaries, calibration and the order-selection entropies, by hand."""

import math
from itertools import permutations

import numpy as np
import pytest

from lab.calibrate import calibrate, content_free_bias, normalise_rows
from lab.entropy import global_entropy, local_entropy
from lab.errors import LabError
from lab.permutations import choose_orders
from lab.stats import accuracy, normalise_answer, summary


def test_all_orders_up_to_the_limit():
    orders = choose_orders(4, 24)
    assert sorted(orders) == sorted(permutations(range(4)))
    assert orders[0] == (0, 1, 2, 3)


def test_sampled_orders_are_distinct_seeded_and_valid():
    orders = choose_orders(6, 30, seed=1)
    assert len(orders) == len(set(orders)) == 30
    assert all(sorted(o) == list(range(6)) for o in orders)
    assert orders == choose_orders(6, 30, seed=1)
    assert orders != choose_orders(6, 30, seed=2)


def test_sampling_below_k_factorial():
    assert len(choose_orders(4, 5)) == 5
    assert len(choose_orders(3, 100)) == 6


def test_order_needs_demonstrations():
    with pytest.raises(LabError, match="an order experiment needs k >= 1, got k=0"):
        choose_orders(0, 24)


def test_accuracy_hand_counted():
    predictions = ["positive", "negative", "Positive", "negative", " positive."]
    golds = ["positive", "positive", "positive", "negative", "positive"]
    assert accuracy(predictions, golds) == 4 / 5  # the second is wrong; case, space and final dot do not count


def test_accuracy_needs_matching_lengths():
    with pytest.raises(ValueError, match="as many predictions as golds"):
        accuracy(["a"], ["a", "b"])


def test_normalise_answer():
    assert normalise_answer("  The  Answer. ") == "the answer"


def test_summary():
    stats = summary([0.5, 0.7, 0.9, 0.7])
    assert stats == pytest.approx({"mean": 0.7, "std": math.sqrt(0.02), "min": 0.5, "max": 0.9})


def test_calibration_removes_a_constant_bias():
    # The model prefers label 0 by a factor of 4 whatever the input; calibration undoes exactly that.
    bias = np.log([0.8, 0.2])
    content_free = np.array([bias, bias])
    real = np.log(np.array([[0.6, 0.4], [0.9, 0.1]]))
    fixed = np.exp(calibrate(real, content_free))
    assert real.argmax(1).tolist() == [0, 0], "sanity check: uncalibrated, both say label 0"
    assert fixed[0] == pytest.approx([0.6 / 0.8, 0.4 / 0.2] / np.sum([0.6 / 0.8, 0.4 / 0.2]))
    assert fixed.argmax(1).tolist() == [1, 0]
    assert np.exp(content_free_bias(content_free)) == pytest.approx([0.8, 0.2])


def test_normalise_rows_sums_to_one():
    rows = normalise_rows(np.array([[-3.0, -5.0, -4.0]]))
    assert np.exp(rows).sum() == pytest.approx(1.0)


def test_global_and_local_entropy():
    always_zero = np.log(np.array([[0.9, 0.1], [0.8, 0.2]]))
    balanced = np.log(np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert global_entropy(always_zero) == 0.0
    assert global_entropy(balanced) == pytest.approx(math.log(2))
    uniform = np.log(np.full((3, 2), 0.5))
    assert local_entropy(uniform) == pytest.approx(math.log(2))
    assert local_entropy(always_zero) < local_entropy(uniform)
