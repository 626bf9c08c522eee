"""Which orders of k demonstrations an order experiment tries: all of them, or a seeded sample."""

from __future__ import annotations

import itertools
import math
import random

from lab.errors import LabError

MAX_ENUMERATED_K = 5
"""Every permutation is listed up to k=5 (120 orders); beyond, orders are only sampled."""


def choose_orders(k: int, limit: int, seed: int = 0) -> list[tuple[int, ...]]:
    """All k! orders when there are at most `limit` (identity first), else `limit` distinct sampled ones."""
    if k < 1:
        raise LabError(f"an order experiment needs k >= 1, got k={k}")
    if limit < 1:
        raise LabError(f"permutations must be >= 1, got {limit}")
    total = math.factorial(k)
    if total <= limit and k <= MAX_ENUMERATED_K:
        return list(itertools.permutations(range(k)))
    rng = random.Random(seed)
    chosen: dict[tuple[int, ...], None] = {tuple(range(k)): None}
    while len(chosen) < min(limit, total):
        order = list(range(k))
        rng.shuffle(order)
        chosen[tuple(order)] = None
    return list(chosen)
