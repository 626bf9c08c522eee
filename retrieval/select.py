"""Choose the demonstrations for a query.

    demos = select_demos(index, "the film was a delight", k=4)             # kNN (KATE)
    demos = select_demos(index, query, k=4, strategy="mmr", diversity=0.3)
    demos = select_demos(pool, query, k=4, strategy="random", seed=1)      # a Pool is enough here
    demos = select_demos(index, query, k=2, strategy="fixed", fixed_ids=[7, 3])

Strategies:
- `knn`: the k most similar examples (Liu et al. 2021, "What Makes Good In-Context Examples");
- `mmr`: maximal marginal relevance, trading similarity to the query for dissimilarity to the
  demonstrations already chosen; `diversity` 0 is plain kNN, 1 ignores the query after the first;
- `random`: k examples drawn with `seed`;
- `fixed`: the first k of the user's `fixed_ids`, in their order.

k = 0 gives no demonstrations (zero-shot). An example whose input equals the query is never
chosen, so a query taken from the pool does not see its own answer. Demonstrations come back in
selection order (kNN: most similar first); `retrieval.order` arranges them for the prompt.
Scores are cosine similarities to the query when selecting from an index, NaN from a bare pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retrieval.index import DemoIndex
from retrieval.pool import Example, Pool

STRATEGIES = ("knn", "random", "mmr", "fixed")
MMR_CANDIDATES = 20
"""MMR re-ranks at least this many nearest examples (and at least 4k)."""


class SelectionError(ValueError):
    """A selection request that cannot be met; the message names the argument."""


@dataclass(frozen=True)
class Demo:
    """A chosen demonstration and how similar it is to the query."""

    example: Example
    score: float
    """Cosine similarity to the query; NaN when selected without an index."""

    @property
    def id(self) -> int:
        return self.example.id

    @property
    def input(self) -> str:
        return self.example.input

    @property
    def output(self) -> str:
        return self.example.output

    def to_dict(self) -> dict:
        return {"id": self.id, "input": self.input, "output": self.output, "score": self.score}


def select_demos(
    source: DemoIndex | Pool,
    query: str,
    k: int,
    strategy: str = "knn",
    seed: int = 0,
    diversity: float = 0.5,
    fixed_ids: list[int] | None = None,
) -> list[Demo]:
    """Pick k demonstrations for `query` from an index (any strategy) or a pool (random, fixed)."""
    _check_arguments(source, k, strategy, diversity, fixed_ids)
    pool = source.pool if isinstance(source, DemoIndex) else source
    excluded = pool.ids_with_input(query)
    available = len(pool) - len(excluded)
    if k > available:
        itself = f", {len(excluded)} of them the query itself" if excluded else ""
        raise SelectionError(f"k={k} is larger than the pool ({len(pool)} examples{itself})")
    if k == 0:
        return []
    if strategy == "knn":
        return _knn(source, query, k, excluded)
    if strategy == "mmr":
        return _mmr(source, query, k, excluded, diversity)
    if strategy == "random":
        candidates = [i for i in range(len(pool)) if i not in excluded]
        ids = np.random.default_rng(seed).choice(candidates, size=k, replace=False).tolist()
    else:
        ids = _fixed(pool, fixed_ids, excluded, k)
    return _with_scores(source, query, ids)


def check_diversity(diversity: float) -> None:
    """MMR's diversity is a weight between 0 and 1."""
    if not 0.0 <= diversity <= 1.0:
        raise SelectionError(f"diversity must be between 0 and 1, got {diversity}")


def _check_arguments(source, k: int, strategy: str, diversity: float, fixed_ids) -> None:
    if strategy not in STRATEGIES:
        raise SelectionError(f"unknown strategy '{strategy}'; choose one of: {', '.join(STRATEGIES)}")
    if not isinstance(k, int) or k < 0:
        raise SelectionError(f"k must be a whole number >= 0 (0 is zero-shot), got {k!r}")
    if strategy in ("knn", "mmr") and not isinstance(source, DemoIndex):
        raise SelectionError(f"strategy '{strategy}' needs an index, not a bare pool; build one with DemoIndex.build")
    check_diversity(diversity)
    if (strategy == "fixed") != (fixed_ids is not None):
        raise SelectionError("fixed_ids go with strategy 'fixed', and strategy 'fixed' needs fixed_ids")


def _knn(index: DemoIndex, query: str, k: int, excluded: set[int]) -> list[Demo]:
    found = index.nearest(query, min(k + len(excluded), len(index)))
    return [Demo(example, score) for example, score in found if example.id not in excluded][:k]


def _mmr(index: DemoIndex, query: str, k: int, excluded: set[int], diversity: float) -> list[Demo]:
    """Greedy MMR: next = argmax (1 - diversity) * sim(query, d) - diversity * max sim(d, chosen)."""
    fetch = min(max(MMR_CANDIDATES, 4 * k) + len(excluded), len(index))
    candidates = [(e, s) for e, s in index.nearest(query, fetch) if e.id not in excluded]
    vectors = index.vectors(e.id for e, _ in candidates)  # (n_candidates, d)
    relevance = np.array([s for _, s in candidates], dtype=np.float64)
    redundancy = np.full(len(candidates), -np.inf)
    chosen: list[int] = []
    for _ in range(k):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        gain = (1.0 - diversity) * relevance - diversity * penalty
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        redundancy = np.maximum(redundancy, vectors @ vectors[best])
    return [Demo(candidates[i][0], candidates[i][1]) for i in chosen]


def _fixed(pool: Pool, fixed_ids: list[int], excluded: set[int], k: int) -> list[int]:
    unknown = [i for i in fixed_ids if not isinstance(i, int) or not 0 <= i < len(pool)]
    if unknown:
        raise SelectionError(f"fixed_ids {unknown} are not in the pool (ids 0..{len(pool) - 1})")
    if len(set(fixed_ids)) != len(fixed_ids):
        raise SelectionError(f"fixed_ids repeat an id: {fixed_ids}")
    usable = [i for i in fixed_ids if i not in excluded]
    if k > len(usable):
        left_out = f" ({len(fixed_ids) - len(usable)} left out: same input as the query)" if excluded else ""
        raise SelectionError(f"k={k} but only {len(usable)} fixed ids are usable{left_out}")
    return usable[:k]


def _with_scores(source: DemoIndex | Pool, query: str, ids: list[int]) -> list[Demo]:
    if not isinstance(source, DemoIndex):
        return [Demo(source.examples[i], math.nan) for i in ids]
    scores = source.vectors(ids) @ source.embed([query])[0]
    return [Demo(source.pool.examples[i], float(s)) for i, s in zip(ids, scores)]
