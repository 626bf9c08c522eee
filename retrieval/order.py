"""Arrange chosen demonstrations for the prompt.

Order matters to small models (Lu et al. 2022, "Fantastically Ordered Prompts"); the strategies:
- `nearest-last` (default): ascending similarity, so the most similar demonstration sits right
  before the query, where a causal model attends to it most (KATE's "reversed" order);
- `nearest-first`: descending similarity;
- `random`: shuffled with `seed`;
- `permutation`: the caller's `permutation`, a reordering of positions 0..k-1 of `demos`.

Sorting is stable, so ties keep their selection order. This module does not select.
"""

from __future__ import annotations

import math

import numpy as np

from retrieval.select import Demo

ORDERS = ("nearest-last", "nearest-first", "random", "permutation")


class OrderError(ValueError):
    """An order request that cannot be applied; the message names the argument."""


def order_demos(
    demos: list[Demo], strategy: str = "nearest-last", seed: int = 0, permutation: list[int] | None = None
) -> list[Demo]:
    """A new list with `demos` in prompt order (the query comes after the last one)."""
    if strategy not in ORDERS:
        raise OrderError(f"unknown order '{strategy}'; choose one of: {', '.join(ORDERS)}")
    if (strategy == "permutation") != (permutation is not None):
        raise OrderError("a permutation goes with order 'permutation', and order 'permutation' needs one")
    if strategy in ("nearest-last", "nearest-first"):
        if any(math.isnan(demo.score) for demo in demos):
            raise OrderError(f"order '{strategy}' needs similarity scores; select the demonstrations from an index")
        return sorted(demos, key=lambda demo: demo.score, reverse=strategy == "nearest-first")
    if strategy == "random":
        return [demos[i] for i in np.random.default_rng(seed).permutation(len(demos))]
    _check_permutation(permutation, len(demos))
    return [demos[i] for i in permutation]


def _check_permutation(permutation: list[int], size: int) -> None:
    if sorted(permutation) != list(range(size)):
        raise OrderError(f"permutation must reorder positions 0..{size - 1}, each once; got {list(permutation)}")
