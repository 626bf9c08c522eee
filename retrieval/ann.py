"""FAISS inner-product indexes over unit vectors (so scores are cosine similarities).

Two kinds:
- `exact`: `IndexFlatIP`, a brute-force scan; the default, and right for pools up to ~100k rows;
- `ivf`: `IndexIVFFlat`, vectors bucketed by k-means and only the `nprobe` nearest buckets
  scanned. `nprobe` is tuned at build time: the smallest value whose recall@k against the exact
  index reaches the target (0.95 by default) with a margin of two standard errors, measured on
  500 stored vectors used as queries and left out of their own results, so that fresh queries
  from the same distribution meet it too.

Buckets: about 4*sqrt(n) (4,096 at a million vectors, ~250 vectors each, so a query scans
little). Plain k-means for 4,096 centroids over a 262k-vector training sample, and assigning a
million vectors to 4,096 centroids, each cost minutes on 2 cores; so the centroids are trained
in two levels (sqrt(nlist) coarse clusters, each split by its own k-means) and vectors are
assigned through the coarse level (their coarse cluster's sub-centroids only). Queries use the
exact flat quantizer over all centroids; vectors that landed in a near-best bucket cost a little
recall, which the `nprobe` tuning measures and pays for.

IVF was chosen over HNSW because on a busy 2-core machine it builds (and tunes) a million
384-d vectors in under two minutes while HNSW takes many minutes, and with tuned `nprobe` it
answers a query in well under a millisecond (see `python -m bench retrieval`).

This module knows nothing about pools, texts or files; `retrieval.index` wraps it, and the
benchmark measures it directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("exact", "ivf")
TARGET_RECALL = 0.95
LISTS_PER_ROOT_N = 4
"""nlist is about this times sqrt(n): 4,096 buckets at a million vectors."""
TRAIN_POINTS_PER_LIST = 64
"""k-means sees at most this many sampled points per bucket: stable centroids, and quick."""
MIN_POINTS_PER_LIST = 39
"""FAISS warns below this many training points per centroid; nlist shrinks for small pools."""
KMEANS_ITERATIONS = 10
"""FAISS defaults to 25; recall after tuning nprobe is the same and training is 2.5x faster."""
TUNING_QUERIES = 500
"""Stored vectors held out as tuning queries: a standard error of recall@8 near 0.005."""


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
    """Buckets for n vectors: the power of two nearest 4*sqrt(n), fewer if buckets would lack training points."""
    wanted = 2 ** round(math.log2(LISTS_PER_ROOT_N * math.sqrt(n)))
    return max(1, min(wanted, n // MIN_POINTS_PER_LIST))


def build_ivf(vectors: np.ndarray, nlist: int | None = None, seed: int = 0) -> AnnIndex:
    """An untuned IVF index (nprobe 1) over `vectors`; call `tune_nprobe` next."""
    import faiss

    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(seed)
    nlist = nlist or default_nlist(n)
    sample = min(n, nlist * TRAIN_POINTS_PER_LIST)
    train = vectors[np.sort(rng.choice(n, size=sample, replace=False))] if sample < n else vectors
    coarse, fine, first_fine = two_level_centroids(train, nlist, seed)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, len(fine), faiss.METRIC_INNER_PRODUCT)
    quantizer.add(fine)
    index.is_trained = True
    for start in range(0, n, 65_536):  # chunks keep the (chunk, centroids) score matrices small
        chunk = vectors[start : start + 65_536]
        lists = assign_two_level(chunk, coarse, fine, first_fine)
        index.add_core(len(chunk), faiss.swig_ptr(chunk), None, faiss.swig_ptr(lists))
    return AnnIndex(index=index, kind="ivf", nprobe=1, recall=0.0)


def two_level_centroids(train: np.ndarray, nlist: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coarse, fine, first_fine): about `nlist` unit centroids from k-means in two levels.

    sqrt(nlist) coarse clusters; each is split by its own k-means into a share of the `nlist`
    fine centroids proportional to its size. Fine centroids of coarse cluster c are rows
    first_fine[c]:first_fine[c + 1] of `fine`. Costs about 2*sqrt(nlist) instead of nlist
    distances per training point and iteration.
    """
    n_coarse = max(1, round(math.sqrt(nlist)))
    coarse = _kmeans(train, n_coarse, seed)
    owner = np.argmax(train @ coarse.T, axis=1)
    kept, fine = [], []
    for cluster in range(n_coarse):
        members = train[owner == cluster]
        if len(members) == 0:  # k-means can leave a centroid that owns nothing
            continue
        share = min(len(members), max(1, round(nlist * len(members) / len(train))))
        kept.append(cluster)
        fine.append(_kmeans(members, share, seed) if share > 1 else _unit(members.mean(axis=0, keepdims=True)))
    first_fine = np.cumsum([0] + [len(block) for block in fine]).astype(np.int64)
    return coarse[kept], np.concatenate(fine), first_fine


def assign_two_level(vectors: np.ndarray, coarse: np.ndarray, fine: np.ndarray, first_fine: np.ndarray) -> np.ndarray:
    """Bucket of each vector: its best fine centroid within its best coarse cluster, (n,) int64."""
    owner = np.argmax(vectors @ coarse.T, axis=1)
    lists = np.empty(len(vectors), dtype=np.int64)
    for cluster in np.unique(owner):
        rows = np.flatnonzero(owner == cluster)
        lo, hi = first_fine[cluster], first_fine[cluster + 1]
        lists[rows] = lo + np.argmax(vectors[rows] @ fine[lo:hi].T, axis=1)
    return lists


def _kmeans(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k spherical k-means centroids (unit rows) of `points`, (k, d)."""
    import faiss

    kmeans = faiss.Kmeans(
        points.shape[1], k, niter=KMEANS_ITERATIONS, seed=seed, spherical=True,
        min_points_per_centroid=1, max_points_per_centroid=1 << 30,  # the caller already sampled
    )
    kmeans.train(np.ascontiguousarray(points, dtype=np.float32))
    return _unit(kmeans.centroids)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def exact_neighbours(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k most similar `vectors` for each query, by brute force without copying `vectors`."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return faiss.knn(queries, np.ascontiguousarray(vectors, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def recall_per_query(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fraction of each query's true neighbours found, (n_queries,); both (n_queries, k) id arrays."""
    return np.array([
        len(set(row[row >= 0]) & set(true_row[true_row >= 0])) / max(int((true_row >= 0).sum()), 1)
        for row, true_row in zip(found, truth)
    ])


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true k neighbours found, over queries; both (n_queries, k) id arrays."""
    return float(recall_per_query(found, truth).mean())


def _drop_self(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first k ids of each row other than the row's own id, (n, k)."""
    return np.stack([row[row != me][:k] for row, me in zip(ids, own)])


def tune_nprobe(
    ann: AnnIndex, own: np.ndarray, vectors: np.ndarray, k: int, target: float = TARGET_RECALL
) -> AnnIndex:
    """The smallest nprobe whose recall@k, leaving stored vectors `own` out as queries, meets `target`.

    Meeting it means the mean minus two standard errors is at least `target`. Recall only grows
    with nprobe (more buckets, exact scores), so doubling finds a bracket and bisection the edge.
    """
    queries = vectors[own]
    truth = _drop_self(exact_neighbours(queries, vectors, k + 1), own, k)
    measured: dict[int, tuple[float, float]] = {}  # nprobe -> (recall, its lower bound)

    def meets(nprobe: int) -> bool:
        if nprobe not in measured:
            ann.nprobe = nprobe
            per_query = recall_per_query(_drop_self(ann.search(queries, k + 1)[1], own, k), truth)
            stderr = float(per_query.std()) / math.sqrt(len(per_query))
            measured[nprobe] = (float(per_query.mean()), float(per_query.mean()) - 2 * stderr)
        return measured[nprobe][1] >= target

    nlist = int(ann.index.nlist)
    low, high = 0, 1  # nprobe 0 scans nothing, so misses; `high` is the candidate
    while not meets(high) and high < nlist:
        low, high = high, min(2 * high, nlist)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if meets(middle) else (middle, high)
    ann.nprobe, ann.recall = high, measured[high][0]
    return ann


def build_ann(
    vectors: np.ndarray, approximate_above: int, k: int = 8, sample_queries: int = TUNING_QUERIES, seed: int = 0
) -> AnnIndex:
    """Exact up to `approximate_above` vectors, tuned IVF above it.

    The tuning queries are stored vectors left out of their own results, so they resemble fresh
    queries from the same distribution; their exact neighbours are the reference.
    """
    if len(vectors) <= approximate_above:
        return build_exact(vectors)
    rng = np.random.default_rng(seed)
    own = np.sort(rng.choice(len(vectors), size=min(sample_queries, len(vectors)), replace=False))
    return tune_nprobe(build_ivf(vectors, seed=seed), own, vectors, k)
