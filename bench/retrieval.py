"""Benchmark the demonstration index: build throughput, per-query latency and recall@8.

    python -m bench retrieval                          # 10k, 100k and 1M vectors (~3 min, ~5 GB RAM)
    python -m bench retrieval --sizes 10000 --json     # one size, JSON on stdout

Vectors are synthetic, 384-d like all-MiniLM-L6-v2, and clustered (points scattered around
random centres, then normalised) so that neighbours are meaningful; uniform noise would make
every point about equally far from every other and recall meaningless. Queries are fresh points
from the same clusters. Compared in one process: numpy brute force (the reference for recall),
FAISS exact (`IndexFlatIP`) and the tuned IVF index that `retrieval.ann.build_ann` makes for
large pools. Latency is one query at a time, as the bot searches. Nothing is asserted here;
the tests check correctness, this module only measures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

DIM = 384
K = 8
POINTS_PER_CLUSTER = 100
SPREAD = 1.0
"""Per-point noise norm relative to the unit cluster centre."""


def clustered(n: int, clusters: int, rng: np.random.Generator, centres: np.ndarray | None = None):
    """(n, DIM) unit vectors around `clusters` random centres; returns (vectors, centres)."""
    if centres is None:
        centres = rng.standard_normal((clusters, DIM), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):  # chunks keep the float temporaries small
        stop = min(start + 100_000, n)
        noise = rng.standard_normal((stop - start, DIM), dtype=np.float32) * (SPREAD / np.sqrt(DIM))
        vectors[start:stop] = centres[rng.integers(0, len(centres), stop - start)] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, centres


def numpy_topk(vectors: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest inner products, best first: the brute-force reference."""
    scores = vectors @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def per_query_ms(search, queries: np.ndarray) -> float:
    """Median milliseconds of `search(query)` over the queries, one at a time."""
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def measure(n: int, queries: int = 200, seed: int = 0) -> dict:
    from retrieval.ann import build_ann, build_exact, recall_at_k

    rng = np.random.default_rng(seed)
    vectors, centres = clustered(n, max(n // POINTS_PER_CLUSTER, 1), rng)
    probes, _ = clustered(queries, 0, rng, centres)
    start = time.perf_counter()
    exact = build_exact(vectors)
    exact_build = time.perf_counter() - start
    start = time.perf_counter()
    ivf = build_ann(vectors, approximate_above=0, k=K, seed=seed)
    ivf_build = time.perf_counter() - start

    truth = np.stack([numpy_topk(vectors, q, K) for q in probes])
    found = ivf.search(probes, K)[1]
    timed = probes[:20] if n >= 500_000 else probes[:100]  # numpy at 1M is ~100 ms a query
    numpy_ms = per_query_ms(lambda q: numpy_topk(vectors, q, K), timed)
    return {
        "size": n,
        "exact_build_s": exact_build,
        "ivf_build_s": ivf_build,
        "ivf_build_vectors_per_s": n / ivf_build,
        "nlist": int(ivf.index.nlist),
        "nprobe": ivf.nprobe,
        "numpy_ms": numpy_ms,
        "faiss_exact_ms": per_query_ms(lambda q: exact.search(q[None], K), timed),
        "ivf_ms": per_query_ms(lambda q: ivf.search(q[None], K), probes),
        "ivf_recall_at_8": recall_at_k(found, truth),
        "exact_matches_numpy": bool((exact.search(probes, K)[1] == truth).mean() > 0.99),
    }


def table(rows: list[dict]) -> str:
    head = f"{'vectors':>9} {'build exact':>11} {'build ivf':>10} {'nprobe':>8} {'numpy ms':>9} {'flat ms':>8} {'ivf ms':>7} {'ivf vs numpy':>12} {'recall@8':>8}"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['size']:>9,} {r['exact_build_s']:>10.2f}s {r['ivf_build_s']:>9.1f}s {r['nprobe']:>4}/{r['nlist']:<4}"
            f"{r['numpy_ms']:>9.2f} {r['faiss_exact_ms']:>8.2f} {r['ivf_ms']:>7.3f} {r['numpy_ms'] / r['ivf_ms']:>11.0f}x"
            f" {r['ivf_recall_at_8']:>8.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bot.cli import OneLineParser

    parser = OneLineParser(prog="python -m bench retrieval", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="queries for latency and recall")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if any(size < 1_000 for size in args.sizes):
        parser.error("--sizes must each be at least 1000")
    rows = [measure(size, args.queries) for size in args.sizes]
    print(json.dumps({"dim": DIM, "k": K, "results": rows}, indent=2) if args.json else table(rows))
    return 0
