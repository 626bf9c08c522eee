"""The train pool and the test items of a lab run, and the checks that they fit the experiment.

Both files are pools (`retrieval.pool.load_pool`). The test sample is drawn once with a fixed
seed, so every experiment and seed of a run is scored on the same items. Training rows whose input
is a sampled test item's (compared ignoring case, spacing and punctuation) are left out of the
train pool, so no demonstration and no fine-tuning step shows a test item with its answer; one file
may serve as both, the sample then held out of it. The label set is the set of test outputs. This
module reads data; it does not select demonstrations.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

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
    held_out: int = 0
    """Training rows left out because their input is a test item's."""
    ood: Pool | None = None
    """Out-of-distribution inputs for the labels experiment, when it is given them (test items held out too)."""

    def label_counts(self) -> dict[str, int]:
        """How often each answer occurs among the test items, commonest first."""
        return dict(Counter(item.output for item in self.test).most_common())

    def train_only_labels(self) -> list[str]:
        """Answers in the train pool that no test item has: demonstrations may show them, but a
        classification run never scores them."""
        tested = set(self.labels)
        return sorted({example.output for example in self.train.examples} - tested) if self.task == "classify" else []

    def majority(self) -> float:
        """The accuracy of always giving the commonest test answer: the bar a classifier must clear
        (0.5 only when the sample is balanced between two labels)."""
        return max(self.label_counts().values()) / len(self.test)


def load_data(train: str, test: str, n_test: int, task: str = "auto", ood: str | None = None) -> LabData:
    pool = _read(train, "--train")
    test_pool = _read(test, "--test")
    items = test_pool.examples
    if len(items) > n_test:
        chosen = sorted(random.Random(TEST_SAMPLE_SEED).sample(range(len(items)), n_test))
        items = [items[i] for i in chosen]
    labels = sorted({example.output for example in test_pool.examples})
    if task == "auto":
        task = "classify" if len(labels) <= MAX_CLASSES else "generate"
    tested = {same_text(item.input) for item in items}
    train_pool = without_inputs(pool, tested)
    ood_pool = without_inputs(_read(ood, "--ood"), tested) if ood else None
    return LabData(train=train_pool, test=items, labels=labels, task=task, held_out=len(pool) - len(train_pool),
                   ood=ood_pool)


SENTENCE_PUNCTUATION = frozenset(".,!?;:'\"()[]“”‘’…。，！？；：、（）")
"""Marks that `same_text` ignores; other symbols (`+`, `#`, `-`, emoji) tell texts apart."""


def same_text(text: str) -> str:
    """What two inputs are compared by: words and symbols, lowercased, without sentence punctuation
    ('Quick, FOX!' is 'quick fox'; 'C++' and 'C#' stay apart)."""
    tokens = re.findall(r"\w+|[^\w\s]", text.casefold())
    return " ".join(token for token in tokens if token not in SENTENCE_PUNCTUATION)


def without_inputs(pool: Pool, inputs: set[str]) -> Pool:
    """`pool` less the examples whose input (by `same_text`) is in `inputs`, renumbered; `pool` itself if none is."""
    kept = [example for example in pool.examples if same_text(example.input) not in inputs]
    return pool if len(kept) == len(pool) else with_examples(pool, kept)


def with_examples(pool: Pool, kept: list) -> Pool:
    """A pool of `kept` (examples of `pool`), renumbered, with `pool`'s task and origin."""
    examples = [replace(example, id=position) for position, example in enumerate(kept)]
    return Pool(examples=examples, task=pool.task, source=pool.source, skipped=pool.skipped,
                duplicates=pool.duplicates)


def nested_samples(pool: Pool, sizes: list[int], seed: int) -> dict[int, Pool]:
    """For each size N, N examples of `pool` drawn with `seed`, each sample holding every smaller one
    (the first N of one seeded shuffle), so a larger training set only adds rows."""
    if sizes and max(sizes) > len(pool):
        raise ValueError(f"a sample of {max(sizes)} from a pool of {len(pool)}")
    order = random.Random(seed).sample(pool.examples, len(pool))
    return {size: with_examples(pool, order[:size]) for size in sizes}


def _read(path: str, flag: str) -> Pool:
    try:
        return load_pool(path)
    except PoolError as error:  # which usually names the file already
        named = Path(path).name in str(error)
        raise LabError(f"{flag}: {error}" if named else f"{flag} {path}: {error}") from error


def check_fits(data: LabData, k: int) -> None:
    """Refuse a k the pool cannot serve, and test labels the demonstrations can never show."""
    if k > len(data.train):
        held = f", after leaving out the {data.held_out} that are test items" if data.held_out else ""
        raise LabError(f"k={k} is larger than the training pool ({len(data.train)} examples in "
                       f"{data.train.source}{held})")
    if data.ood is not None and k > len(data.ood):
        inputs = f"{len(data.ood)} {'input' if len(data.ood) == 1 else 'inputs'}"
        raise LabError(f"k={k} is larger than the --ood pool ({inputs} in {data.ood.source})")
    if data.task != "classify":
        return
    if len(data.labels) < 2:
        raise LabError(f"the test set has only one label ('{data.labels[0]}'), so every answer would score as "
                       "right; use a test set with at least two labels")
    train_labels = {example.output for example in data.train.examples}
    missing = [label for label in data.labels if label not in train_labels]
    if missing:
        held = f" once the {data.held_out} rows that are test items are left out" if data.held_out else ""
        raise LabError(
            f"test label '{missing[0]}' does not occur in the training pool {data.train.source}{held}; "
            f"its labels: {', '.join(sorted(train_labels)[:20])}"
        )
