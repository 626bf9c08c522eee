"""Demonstration sets for experiments, chosen with `retrieval.select` and `retrieval.order`.

- `random_set`: one random set per seed, shared by every test item (so its KV cache is shared);
- `for_query`: per-query kNN or MMR from a `DemoIndex` (most similar last, next to the query),
  or the seed's random set.
The index is built lazily, once per run, because embedding the pool is the slow part.
"""

from __future__ import annotations

from dataclasses import asdict

from lab.errors import LabError
from lab.prompt import Demo
from retrieval.order import order_demos
from retrieval.pool import Pool
from retrieval.select import SelectionError, select_demos

SELECTIONS = ("random", "knn", "mmr")


def as_demos(chosen) -> tuple[Demo, ...]:
    return tuple(Demo(item.input, item.output) for item in chosen)


def shown_per_item(per_item: list[tuple[Demo, ...]]) -> list[list[dict]]:
    """What result.json records of per-item demonstrations: each test item's, in prompt order."""
    return [[asdict(demo) for demo in demos] for demos in per_item]


def random_set(pool: Pool, k: int, seed: int) -> tuple[Demo, ...]:
    try:
        return as_demos(select_demos(pool, "", k, strategy="random", seed=seed))
    except SelectionError as error:
        raise LabError(str(error)) from error


class DemoChooser:
    """Chooses demonstrations per query; owns the lazily built index."""

    def __init__(self, pool: Pool, embedder_spec: str, diversity: float = 0.5):
        self.pool = pool
        self.embedder_spec = embedder_spec
        self.diversity = diversity
        self._embedder = None
        self._index = None

    def over(self, pool: Pool) -> DemoChooser:
        """A chooser of demonstrations from `pool` that shares this one's (loaded) embedder."""
        chooser = DemoChooser(pool, self.embedder_spec, self.diversity)
        chooser._embedder = self._embedder
        return chooser

    def embedder(self):
        """The embedder, loaded once; a spec that names none is a LabError (checked before the model loads)."""
        if self._embedder is None:
            from retrieval.embedder import EmbedderError, load_embedder

            try:
                self._embedder = load_embedder(self.embedder_spec)
            except EmbedderError as error:
                raise LabError(f"--embedder {self.embedder_spec}: {error}") from error
        return self._embedder

    @property
    def index(self):
        if self._index is None:
            from retrieval.index import DemoIndex

            self._index = DemoIndex.build(self.pool, self.embedder())
        return self._index

    def for_query(self, query: str, k: int, selection: str, seed: int) -> tuple[Demo, ...]:
        if selection not in SELECTIONS:
            raise LabError(f"unknown selection '{selection}'; choose one of: {', '.join(SELECTIONS)}")
        if selection == "random" or k == 0:
            return random_set(self.pool, k, seed)
        try:
            chosen = select_demos(self.index, query, k, strategy=selection, diversity=self.diversity)
        except SelectionError as error:
            raise LabError(str(error)) from error
        return as_demos(order_demos(chosen, "nearest-last"))
