"""FAISS inner-product indexes over unit vectors (so scores are cosine similarities).

Two kinds:
- `exact`: `IndexFlatIP`, a brute-force scan; the default, and right for pools up to ~100k rows;
- `ivf`: `IndexIVFFlat`, vectors bucketed by k-means and only the `nprobe` nearest buckets
  scanned. `nprobe` is tuned at build time: it doubles until recall@k against the exact index,
  measured on sample queries, reaches the target (0.95 by default).

IVF was chosen over HNSW because on a 2-core machine it builds a million 384-d vectors in well
under a minute while HNSW takes many minutes, and with tuned `nprobe` it queries as fast
(see `python -m bench retrieval`). This module knows nothing about pools, texts or files;
`retrieval.index` wraps it, and the benchmark measures it directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("exact", "ivf")
TARGET_RECALL = 0.95
TRAIN_POINTS_PER_LIST = 40
"""k-means sees at most this many points per bucket: enough for stable centroids, and quick."""
KMEANS_ITERATIONS = 10
"""FAISS defaults to 25; recall after tuning nprobe is the same and training is 2.5x faster."""


@dataclass
class AnnIndex:
    """A FAISS index and how it was tuned."""

    index: object
    """The faiss index (ids are insertion positions)."""
    kind: str
    """'exact' or 'ivf'."""
    nprobe: int = 0
    """Buckets scanned per query (ivf only)."""
    recall: float = 1.0
    """recall@k against the exact index, measured when tuned (1.0 for exact)."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"AnnIndex.kind must be one of {', '.join(KINDS)}, got '{self.kind}'")

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first; ids are -1 where fewer than k exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind == "ivf":
            self.index.nprobe = self.nprobe
        return self.index.search(queries, k)

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids`, (len(ids), d)."""
        import faiss

        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "ivf" and self.index.direct_map.type == faiss.DirectMap.NoMap:
            self.index.make_direct_map()  # once; later adds keep it up to date
        return self.index.reconstruct_batch(ids)


def build_exact(vectors: np.ndarray) -> AnnIndex:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return AnnIndex(index=index, kind="exact")


def default_nlist(n: int) -> int:
    """Buckets for n vectors: about sqrt(n) (1,000 for a million), and few enough that each gets training points."""
    return max(1, min(int(math.sqrt(n)), n // TRAIN_POINTS_PER_LIST))


def build_ivf(vectors: np.ndarray, nlist: int | None = None, seed: int = 0) -> AnnIndex:
    """An untuned IVF index (nprobe 1) over `vectors`; call `tune_nprobe` next."""
    import faiss

    n, dim = vectors.shape
    nlist = nlist or default_nlist(n)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = min(n, nlist * TRAIN_POINTS_PER_LIST)
    train = vectors[np.sort(rng.choice(n, size=sample, replace=False))] if sample < n else vectors
    index.cp.seed = seed
    index.cp.niter = KMEANS_ITERATIONS
    index.train(train)
    index.add(vectors)
    return AnnIndex(index=index, kind="ivf", nprobe=1, recall=0.0)


def exact_neighbours(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k most similar `vectors` for each query, by brute force without copying `vectors`."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return faiss.knn(queries, np.ascontiguousarray(vectors, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true k neighbours found, over queries; both (n_queries, k) id arrays."""
    hits = sum(len(set(row[row >= 0]) & set(true_row[true_row >= 0])) for row, true_row in zip(found, truth))
    return hits / max(int((truth >= 0).sum()), 1)


def tune_nprobe(ann: AnnIndex, queries: np.ndarray, truth: np.ndarray, k: int, target: float = TARGET_RECALL) -> AnnIndex:
    """Double `nprobe` until recall@k on `queries` (true neighbours `truth`) reaches `target`."""
    nlist = int(ann.index.nlist)
    nprobe = 1
    while True:
        ann.nprobe = nprobe
        ann.recall = recall_at_k(ann.search(queries, k)[1], truth)
        if ann.recall >= target or nprobe >= nlist:
            return ann
        nprobe = min(nprobe * 2, nlist)


def build_ann(
    vectors: np.ndarray, approximate_above: int, k: int = 8, sample_queries: int = 200, seed: int = 0
) -> AnnIndex:
    """Exact up to `approximate_above` vectors, tuned IVF above it.

    The tuning queries are stored vectors with a little noise, so they resemble real queries
    near the data rather than exact copies of it.
    """
    if len(vectors) <= approximate_above:
        return build_exact(vectors)
    rng = np.random.default_rng(seed)
    picked = vectors[rng.choice(len(vectors), size=min(sample_queries, len(vectors)), replace=False)]
    noise = rng.normal(scale=0.5 / math.sqrt(vectors.shape[1]), size=picked.shape).astype(np.float32)
    queries = picked + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = exact_neighbours(queries, vectors, k)
    return tune_nprobe(build_ivf(vectors, seed=seed), queries, truth, k)
