"""Benchmark the demonstration index: build throughput, per-query latency and recall@8.

    python -m bench retrieval                          # 10k, 100k and 1M vectors (~5 min, ~6 GB RAM)
    python -m bench retrieval --sizes 10000 --json     # one size, JSON on stdout

The goal it checks: one query at 1M vectors (384-d, unit length, inner product) in at most
5 ms with recall@8 at least 0.95 against numpy brute force, on a 2-core machine.

Data. Vectors are synthetic, 384-d like all-MiniLM-L6-v2, drawn from one fixed distribution
shaped like sentence embeddings, whatever the size:
- 300 topics, each a random unit direction;
- 30 subtopics per topic (9,000 in all): the topic plus a random offset of norm 0.4,
  renormalised (sibling subtopic centres have cosine ~0.86, unrelated ones ~0);
- a point: its subtopic centre plus isotropic noise of norm 0.6 to 1.0 (fixed per subtopic:
  some subjects are tighter than others), renormalised. Points of one subtopic have cosine
  ~0.5-0.75, of sibling subtopics ~0.4-0.65, of other topics ~0.
Subtopics are picked with log-normal weights (sigma 1), so the top 1% of subjects are ~10x
as common as the median one, as in real corpora. At 1M a subtopic holds ~110 points on average; about 85% of the
true neighbours share the query's subtopic and the rest come from its siblings, and the 1st
and 8th neighbours differ by ~0.01 in cosine, so the ranking is not trivial. At 10k most
subtopics hold one point or none and neighbours come from sibling subtopics. `same subtopic`
in the table is that share of true neighbours in the query's subtopic. Queries are fresh
draws from the same distribution, never in the index. Uniform noise is deliberately absent:
in 384-d it makes all points nearly equidistant and recall meaningless.

Compared in one process: numpy brute force (the reference for recall), FAISS exact
(`IndexFlatIP`) and the tuned IVF index that `retrieval.ann.build_ann` makes for large pools
(its `nprobe` is tuned on stored vectors held out of their own results, not on these queries).
Latency is the median over single queries, as the bot searches (one chat message at a time);
`batch` is one search of all queries at once, per query. FAISS runs on one OpenMP thread
throughout: it searches a single query on one thread anyway, and on a shared, oversubscribed
2-core machine two threads made k-means 5x slower (their barriers wait on descheduled peers).
Timings on a busy machine are noisy; compare the ratios within one run.
Nothing is asserted here; the tests check correctness, this module only measures.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

DIM = 384
K = 8
TOPICS = 300
SUBTOPICS_PER_TOPIC = 30
SUBTOPIC_OFFSET = 0.4
"""Norm of a subtopic's offset from its unit topic direction."""
NOISE = (0.6, 1.0)
"""Range of a subtopic's per-point noise norm (relative to the unit subtopic centre)."""
POPULARITY_SIGMA = 1.0
"""Log-normal sigma of subtopic weights."""
GOAL_MS, GOAL_RECALL, GOAL_SIZE = 5.0, 0.95, 1_000_000
FAISS_THREADS = 1


@dataclass
class Corpus:
    """The fixed generating distribution: subtopic centres, their noise norms and weights."""

    centres: np.ndarray
    """(subtopics, DIM) unit vectors."""
    noise: np.ndarray
    """(subtopics,) noise norm of each subtopic's points."""
    weights: np.ndarray
    """(subtopics,) probabilities of drawing each subtopic."""

    @classmethod
    def make(cls, rng: np.random.Generator) -> Corpus:
        topics = _unit(rng.standard_normal((TOPICS, DIM), dtype=np.float32))
        offsets = _unit(rng.standard_normal((TOPICS, SUBTOPICS_PER_TOPIC, DIM), dtype=np.float32))
        centres = _unit((topics[:, None, :] + SUBTOPIC_OFFSET * offsets).reshape(-1, DIM))
        noise = rng.uniform(*NOISE, size=len(centres)).astype(np.float32)
        weights = rng.lognormal(sigma=POPULARITY_SIGMA, size=len(centres))
        return cls(centres=centres, noise=noise, weights=weights / weights.sum())

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, DIM) unit float32, subtopic of each (n,))."""
        subtopics = rng.choice(len(self.centres), size=n, p=self.weights)
        vectors = np.empty((n, DIM), dtype=np.float32)
        for start in range(0, n, 100_000):  # chunks keep the float temporaries small
            part = subtopics[start : start + 100_000]
            noise = _unit(rng.standard_normal((len(part), DIM), dtype=np.float32)) * self.noise[part, None]
            vectors[start : start + len(part)] = _unit(self.centres[part] + noise)
        return vectors, subtopics


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def numpy_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest inner products per query, best first, (n_queries, k): the reference."""
    scores = np.atleast_2d(queries) @ vectors.T  # (n_queries, n)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def per_query_ms(search, queries: np.ndarray) -> float:
    """Median milliseconds of `search(query)` over the queries, one at a time."""
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query[None])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def measure(n: int, queries: int = 200, seed: int = 0) -> dict:
    import faiss

    from retrieval.ann import build_ann, build_exact, recall_at_k

    corpus = Corpus.make(np.random.default_rng(seed))
    vectors, labels = corpus.sample(n, np.random.default_rng(seed + 1))
    probes, probe_labels = corpus.sample(queries, np.random.default_rng(seed + 2))
    faiss.omp_set_num_threads(FAISS_THREADS)
    start = time.perf_counter()
    exact = build_exact(vectors)
    exact_build = time.perf_counter() - start
    start = time.perf_counter()
    ivf = build_ann(vectors, approximate_above=0, k=K, seed=seed)
    ivf_build = time.perf_counter() - start

    truth = np.concatenate([numpy_topk(vectors, probes[i : i + 20], K) for i in range(0, queries, 20)])
    start = time.perf_counter()
    found = ivf.search(probes, K)[1]
    batch_ms = 1000 * (time.perf_counter() - start) / queries
    timed = probes[:20] if n >= 500_000 else probes[:100]  # numpy at 1M is ~100 ms a query
    return {
        "size": n,
        "faiss_threads": FAISS_THREADS,
        "exact_build_s": exact_build,
        "ivf_build_s": ivf_build,
        "ivf_build_vectors_per_s": n / ivf_build,
        "nlist": int(ivf.index.nlist),
        "nprobe": ivf.nprobe,
        "tuned_recall_at_8": ivf.recall,
        "numpy_ms": per_query_ms(lambda q: numpy_topk(vectors, q, K), timed),
        "faiss_exact_ms": per_query_ms(lambda q: exact.search(q, K), timed),
        "ivf_ms": per_query_ms(lambda q: ivf.search(q, K), probes),
        "ivf_batch_ms_per_query": batch_ms,
        "ivf_recall_at_8": recall_at_k(found, truth),
        "same_subtopic_share": float((labels[truth] == probe_labels[:, None]).mean()),
        "exact_matches_numpy": bool((exact.search(probes, K)[1] == truth).mean() > 0.99),
    }


def table(rows: list[dict]) -> str:
    head = (
        f"{'vectors':>9} {'build flat':>10} {'build ivf':>10} {'vec/s':>8} {'nprobe':>10} {'numpy ms':>9}"
        f" {'flat ms':>8} {'ivf ms':>7} {'vs numpy':>8} {'batch ms':>8} {'recall@8':>8} {'same subtopic':>13}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['size']:>9,} {r['exact_build_s']:>9.2f}s {r['ivf_build_s']:>9.1f}s"
            f" {r['ivf_build_vectors_per_s']:>8,.0f} {r['nprobe']:>5}/{r['nlist']:<4} {r['numpy_ms']:>9.2f}"
            f" {r['faiss_exact_ms']:>8.2f} {r['ivf_ms']:>7.3f}"
            f" {r['numpy_ms'] / r['ivf_ms']:>7.0f}x {r['ivf_batch_ms_per_query']:>8.3f} {r['ivf_recall_at_8']:>8.3f}"
            f" {r['same_subtopic_share']:>13.2f}"
        )
    for r in rows:
        if r["size"] == GOAL_SIZE:
            met = r["ivf_ms"] <= GOAL_MS and r["ivf_recall_at_8"] >= GOAL_RECALL
            lines.append(
                f"goal at 1M ({GOAL_MS:g} ms, recall@8 >= {GOAL_RECALL}): {'met' if met else 'NOT met'}"
                f" ({r['ivf_ms']:.2f} ms, {r['ivf_recall_at_8']:.3f})"
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
