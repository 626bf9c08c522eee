"""Accuracy and summary statistics of lab results. Plain Python and numpy; no model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalise_answer(text: str) -> str:
    """What exact match compares: lowercased, whitespace collapsed, outer punctuation stripped."""
    return " ".join(text.lower().split()).strip(" .!?,;:'\"")


def matches(predictions: Sequence[str], golds: Sequence[str]) -> list[bool]:
    """Per item, whether the prediction is an exact (normalised) match of its gold answer."""
    if len(predictions) != len(golds):
        raise ValueError(f"expected as many predictions as golds, got {len(predictions)} and {len(golds)}")
    return [normalise_answer(p) == normalise_answer(g) for p, g in zip(predictions, golds)]


def accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of exact (normalised) matches."""
    if not golds:
        raise ValueError("accuracy needs as many predictions as golds (>0), got none")
    return sum(matches(predictions, golds)) / len(golds)


def summary(values: Sequence[float]) -> dict:
    """mean, std (population, ddof=0), min and max of a non-empty list."""
    if not values:
        raise ValueError("summary needs at least one value")
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()), "max": float(array.max())}
