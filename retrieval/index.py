"""A searchable pool: the examples, their embeddings in FAISS, and the embedder that made them.

    index = DemoIndex.build(load_pool("pool.jsonl"), load_embedder())
    index.save("indexes/sentiment")
    index = DemoIndex.load("indexes/sentiment", load_embedder())
    scores, ids = index.search(index.embed(["a query"]), k=4)

Scores are cosine similarities (inner products of unit vectors). Pools up to `approximate_above`
examples get an exact index, larger ones a tuned IVF index (see `retrieval.ann`), whose measured
recall is kept in the metadata.

On disk an index folder holds the FAISS file (`faiss.write_index`, never pickle), the examples as
JSONL and `meta.json` with the embedder's name, the pool's hash and the files' sha256 (written
crash-safe by `retrieval.storage`). Loading refuses a folder whose files were altered, or that was
built by another embedder or from another pool. Selecting and ordering demonstrations live in
`retrieval.select` and `retrieval.order`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.ann import AnnIndex, build_ann
from retrieval.embedder import Embedder, Progress
from retrieval.pool import Example, Pool
from retrieval.storage import read_meta, save_folder, verified_path

FORMAT_VERSION = 1
APPROXIMATE_ABOVE = 50_000
"""Pools larger than this get an approximate (IVF) index."""


class IndexMismatch(ValueError):
    """A saved index that does not belong to the embedder or pool it is loaded with."""


@dataclass
class DemoIndex:
    """The examples of a pool, searchable by meaning."""

    pool: Pool
    """The examples; example `i` is vector `i` of the FAISS index."""
    embedder: Embedder
    """Embeds queries (and added examples) the same way the pool was embedded."""
    ann: AnnIndex
    """The FAISS index and its tuning."""

    def __post_init__(self):
        if self.ann.size != len(self.pool):
            raise ValueError(f"DemoIndex.ann holds {self.ann.size} vectors but the pool has {len(self.pool)} examples")
        if int(self.ann.index.d) != self.embedder.dim:
            raise ValueError(f"DemoIndex.ann has {self.ann.index.d}-d vectors; embedder '{self.embedder.name}' makes {self.embedder.dim}-d")

    @classmethod
    def build(
        cls, pool: Pool, embedder: Embedder, approximate_above: int = APPROXIMATE_ABOVE, progress: Progress | None = None
    ) -> DemoIndex:
        """Embed every example's input and index the vectors."""
        vectors = embedder.embed([example.input for example in pool.examples], progress=progress)
        return cls(pool=pool, embedder=embedder, ann=build_ann(vectors, approximate_above))

    def __len__(self) -> int:
        return len(self.pool)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts, show_progress=False)

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), most similar first."""
        query_vectors = np.atleast_2d(np.asarray(query_vectors, dtype=np.float32))
        if query_vectors.shape[1] != self.embedder.dim:
            raise ValueError(f"query vectors are {query_vectors.shape[1]}-d; this index holds {self.embedder.dim}-d")
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be between 1 and the pool size ({len(self)}), got {k}")
        return self.ann.search(query_vectors, k)

    def nearest(self, text: str, k: int) -> list[tuple[Example, float]]:
        """The k examples most similar to `text`, with their cosine similarity, best first."""
        scores, ids = self.search(self.embed([text]), k)
        return [(self.pool.examples[i], float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]

    def vectors(self, ids: Iterable[int]) -> np.ndarray:
        """Stored unit vectors of the given example ids, (len(ids), d)."""
        return self.ann.vectors(np.fromiter(ids, dtype=np.int64))

    def add(self, examples: Iterable[Example | dict]) -> list[Example]:
        """Append examples (Examples or {"input", "output", ...} dicts); exact duplicates are skipped.

        Returns the examples added, with their new ids. The pool's hash changes accordingly.
        """
        seen = {(example.input, example.output) for example in self.pool.examples}
        added: list[Example] = []
        for item in examples:
            example = _as_example(item, len(self.pool) + len(added))
            if (example.input, example.output) not in seen:
                seen.add((example.input, example.output))
                added.append(example)
        if added:
            self.ann.add(self.embedder.embed([example.input for example in added]))
            self.pool = Pool(examples=self.pool.examples + added, task=self.pool.task, source=self.pool.source)
        return added

    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "embedder": self.embedder.name,
            "dim": self.embedder.dim,
            "pool_sha256": self.pool.sha256,
            "pool_source": self.pool.source,
            "task": self.pool.task,
            "size": len(self.pool),
            "kind": self.ann.kind,
            "nprobe": self.ann.nprobe,
            "recall": self.ann.recall,
        }

    def save(self, folder: str | Path) -> dict:
        """Write the index crash-safe into `folder` (see `retrieval.storage`); return its metadata."""
        import faiss

        def write_examples(path: Path) -> None:
            with path.open("w", encoding="utf-8") as handle:
                for example in self.pool.examples:
                    handle.write(json.dumps(example.to_record(), ensure_ascii=False) + "\n")

        files = {"index": lambda path: faiss.write_index(self.ann.index, str(path)), "examples": write_examples}
        return save_folder(Path(folder), files, self.metadata())

    @classmethod
    def load(cls, folder: str | Path, embedder: Embedder, pool: Pool | None = None) -> DemoIndex:
        """Read a saved index; refuse it if its files changed, or it was made by another embedder or pool."""
        import faiss

        folder = Path(folder)
        meta = read_meta(folder)
        _check_matches(folder, meta, embedder, pool)
        examples = _read_examples(verified_path(folder, meta, "examples"))
        index = faiss.read_index(str(verified_path(folder, meta, "index")))
        loaded = Pool(examples=examples, task=meta.get("task"), source=meta.get("pool_source", str(folder)))
        ann = AnnIndex(index=index, kind=meta["kind"], nprobe=int(meta["nprobe"]), recall=float(meta["recall"]))
        return cls(pool=loaded, embedder=embedder, ann=ann)


def _check_matches(folder: Path, meta: dict, embedder: Embedder, pool: Pool | None) -> None:
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexMismatch(f"index at '{folder}' has format {meta.get('format_version')}; expected {FORMAT_VERSION}; rebuild it")
    if meta.get("embedder") != embedder.name:
        raise IndexMismatch(
            f"index at '{folder}' was built with embedder '{meta.get('embedder')}', not '{embedder.name}'; "
            "load it with that embedder or rebuild the index"
        )
    if pool is not None and meta.get("pool_sha256") != pool.sha256:
        raise IndexMismatch(
            f"index at '{folder}' was built from another pool (sha256 {str(meta.get('pool_sha256'))[:12]}, "
            f"this pool {pool.sha256[:12]}); rebuild the index"
        )


def _read_examples(path: Path) -> list[Example]:
    examples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        examples.append(Example(id=record["id"], input=record["input"], output=record["output"], extra=record["extra"]))
    return examples


def _as_example(item: Example | dict, new_id: int) -> Example:
    if isinstance(item, Example):
        return Example(id=new_id, input=item.input, output=item.output, extra=dict(item.extra))
    if not isinstance(item, dict) or "input" not in item or "output" not in item:
        raise ValueError(f"an added example must be an Example or a dict with 'input' and 'output', got {item!r}")
    extra = {key: value for key, value in item.items() if key not in ("input", "output")}
    return Example(id=new_id, input=item["input"], output=str(item["output"]), extra=extra)
