"""The train pool and the test items of a lab run, and the checks that they fit the experiment.

Both files are pools (`retrieval.pool.load_pool`). The test sample is drawn once with a fixed
seed, so every experiment and seed of a run is scored on the same items. The label set is the
set of test outputs. This module reads data; it does not select demonstrations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lab.errors import LabError
from retrieval.pool import Example, Pool, PoolError, load_pool

TEST_SAMPLE_SEED = 1234
MAX_CLASSES = 20
"""`task: auto` treats a test set with more distinct outputs than this as generation."""


@dataclass
class LabData:
    train: Pool
    test: list[Example]
    """The sampled test items, in file order."""
    labels: list[str]
    """Distinct test outputs, sorted."""
    task: str
    """`classify` or `generate`."""


def load_data(train: str, test: str, n_test: int, task: str = "auto") -> LabData:
    pool = _read(train, "--train")
    test_pool = _read(test, "--test")
    items = test_pool.examples
    if len(items) > n_test:
        chosen = sorted(random.Random(TEST_SAMPLE_SEED).sample(range(len(items)), n_test))
        items = [items[i] for i in chosen]
    labels = sorted({example.output for example in test_pool.examples})
    if task == "auto":
        task = "classify" if len(labels) <= MAX_CLASSES else "generate"
    return LabData(train=pool, test=items, labels=labels, task=task)


def _read(path: str, flag: str) -> Pool:
    try:
        return load_pool(path)
    except PoolError as error:
        raise LabError(f"{flag} {path}: {error}") from error


def check_fits(data: LabData, k: int) -> None:
    """Refuse a k the pool cannot serve, and test labels the demonstrations can never show."""
    if k > len(data.train):
        raise LabError(f"k={k} is larger than the training pool ({len(data.train)} examples in {data.train.source})")
    if data.task != "classify":
        return
    if len(data.labels) < 2:
        raise LabError(f"the test set has only one label ('{data.labels[0]}'), so every answer would score as "
                       "right; use a test set with at least two labels")
    train_labels = {example.output for example in data.train.examples}
    missing = [label for label in data.labels if label not in train_labels]
    if missing:
        raise LabError(
            f"test label '{missing[0]}' does not occur in the training pool {data.train.source}; "
            f"its labels: {', '.join(sorted(train_labels)[:20])}"
        )
