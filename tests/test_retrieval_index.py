"""The FAISS index against numpy brute force, its approximate mode, and what it does on disk."""

import json

import numpy as np
import pytest

import retrieval.storage
from retrieval.ann import (
    assign_two_level, build_ann, build_exact, build_ivf, recall_at_k, recall_per_query, tune_nprobe,
    two_level_centroids,
)
from retrieval.embedder import Embedder, HashEmbedder, normalise
from retrieval.index import DemoIndex, IndexMismatch
from retrieval.pool import Example, Pool
from retrieval.storage import StorageError

WORDS = "film plot actor music boring great slow funny dark long short scene ending cast story visual".split()


def make_pool(n: int, seed: int = 0) -> Pool:
    rng = np.random.default_rng(seed)
    texts = sorted({" ".join(rng.choice(WORDS, size=5)) for _ in range(n * 2)})[:n]
    examples = [Example(id=i, input=t, output=f"label{i % 3}") for i, t in enumerate(texts)]
    return Pool(examples=examples, task="Label it.", source="memory")


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int):
    scores = queries @ vectors.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def without_self(ids: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Each row's ids other than its own query's id, first 8."""
    return np.stack([row[row != me][:8] for row, me in zip(ids, own)])


def clustered(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors scattered around the centres (noise about as long as a centre)."""
    points = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, centres.shape[1])) * 0.2
    return normalise(points)


@pytest.fixture(scope="module")
def embedder():
    return HashEmbedder(dim=64)


@pytest.fixture(scope="module")
def pool():
    return make_pool(300)


class TableEmbedder(Embedder):
    """A fake embedder: seeded random vectors looked up by text, so no two scores tie."""

    name = "table"

    def __init__(self, texts: list[str], dim: int = 48, seed: int = 0):
        self.dim = dim
        rows = np.random.default_rng(seed).standard_normal((len(texts), dim))
        self.table = dict(zip(texts, rows))

    def embed_batch(self, texts):
        return np.stack([self.table[text] for text in texts])


def test_neighbours_equal_numpy_brute_force():
    texts = [f"text {i}" for i in range(500)]
    embedder = TableEmbedder(texts)
    pool = Pool([Example(id=i, input=t, output="x") for i, t in enumerate(texts[:450])], task=None, source="memory")
    index = DemoIndex.build(pool, embedder)
    vectors, queries = embedder.embed(texts[:450]), embedder.embed(texts[450:])
    scores, ids = index.search(queries, 8)
    want_scores, want_ids = brute_force(vectors, queries, 8)
    assert not np.array_equal(ids[0], np.arange(8))  # sanity check: the answer is not trivial
    assert np.array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_vectors_are_unit_length(pool, embedder):
    vectors = embedder.embed([e.input for e in pool.examples])
    assert vectors.dtype == np.float32 and vectors.shape == (len(pool), 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_save_load_gives_the_same_neighbours(tmp_path, pool, embedder):
    index = DemoIndex.build(pool, embedder)
    index.save(tmp_path / "idx")
    loaded = DemoIndex.load(tmp_path / "idx", embedder, pool=pool)
    queries = embedder.embed(["funny cast", "long story"])
    assert np.array_equal(index.search(queries, 6)[1], loaded.search(queries, 6)[1])
    assert loaded.pool.examples == pool.examples and loaded.pool.sha256 == pool.sha256
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["embedder"] == "hash-64" and meta["pool_sha256"] == pool.sha256
    assert set(meta["files"]) == {"index", "examples"}


def test_approximate_recall_on_clustered_data():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((200, 32))
    vectors, queries = clustered(20_000, centres, rng), clustered(200, centres, rng)
    ann = build_ann(vectors, approximate_above=1_000, k=8)
    assert ann.kind == "ivf" and ann.recall >= 0.95
    truth = build_exact(vectors).search(queries, 8)[1]
    assert recall_at_k(ann.search(queries, 8)[1], truth) >= 0.95
    assert ann.nprobe < ann.index.nlist  # sanity check: it is not just scanning everything


def test_tuning_picks_the_smallest_nprobe_that_meets_the_target():
    rng = np.random.default_rng(4)
    vectors = clustered(20_000, rng.standard_normal((200, 32)), rng)
    own = np.arange(0, 20_000, 40)  # 500 stored vectors, each left out of its own results
    ann = tune_nprobe(build_ivf(vectors), own, vectors, k=8)
    assert 1 < ann.nprobe < ann.index.nlist  # sanity check: tuning had something to decide

    def held_out_recall(nprobe: int) -> np.ndarray:
        ann.nprobe = nprobe
        found, truth = ann.search(vectors[own], 9)[1], build_exact(vectors).search(vectors[own], 9)[1]
        return recall_per_query(without_self(found, own), without_self(truth, own))

    def lower_bound(per_query: np.ndarray) -> float:
        return per_query.mean() - 2 * per_query.std() / np.sqrt(len(per_query))

    chosen = ann.nprobe
    assert lower_bound(held_out_recall(chosen)) >= 0.95
    assert lower_bound(held_out_recall(chosen - 1)) < 0.95


def test_two_level_assignment_mostly_picks_the_nearest_bucket():
    rng = np.random.default_rng(5)
    vectors = clustered(20_000, rng.standard_normal((200, 32)), rng)
    coarse, fine, first_fine = two_level_centroids(vectors, 256, seed=0)
    assert 200 <= len(fine) <= 300 and np.array_equal(first_fine[[0, -1]], [0, len(fine)])
    lists = assign_two_level(vectors, coarse, fine, first_fine)
    nearest = np.argmax(vectors @ fine.T, axis=1)
    assert not np.all(lists == nearest)  # sanity check: the shortcut is an approximation
    assert np.mean(lists == nearest) >= 0.9


def test_large_pool_gets_an_approximate_index_that_survives_a_reload(tmp_path, embedder):
    pool = make_pool(3_000, seed=2)
    index = DemoIndex.build(pool, embedder, approximate_above=1_000)
    assert index.ann.kind == "ivf"
    meta = index.save(tmp_path / "idx")
    assert meta["kind"] == "ivf" and meta["recall"] >= 0.95
    loaded = DemoIndex.load(tmp_path / "idx", embedder)
    queries = embedder.embed(["film plot actor", "dark cast"])
    assert np.array_equal(index.search(queries, 8)[1], loaded.search(queries, 8)[1])
    assert loaded.ann.nprobe == index.ann.nprobe


def test_tampered_file_is_refused(tmp_path, pool, embedder):
    DemoIndex.build(pool, embedder).save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    target = tmp_path / "idx" / meta["files"]["index"]["name"]
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="is corrupted or was modified: its sha256 does not match"):
        DemoIndex.load(tmp_path / "idx", embedder)


def test_missing_index_folder(tmp_path, embedder):
    with pytest.raises(StorageError, match=r"no index at .* \(meta.json is missing\)"):
        DemoIndex.load(tmp_path / "nothing", embedder)


def test_other_embedder_is_refused(tmp_path, pool, embedder):
    DemoIndex.build(pool, embedder).save(tmp_path / "idx")
    with pytest.raises(IndexMismatch, match="built with embedder 'hash-64', not 'hash-32'"):
        DemoIndex.load(tmp_path / "idx", HashEmbedder(dim=32))


def test_other_pool_is_refused(tmp_path, pool, embedder):
    DemoIndex.build(pool, embedder).save(tmp_path / "idx")
    with pytest.raises(IndexMismatch, match="built from another pool"):
        DemoIndex.load(tmp_path / "idx", embedder, pool=make_pool(10, seed=5))


def test_interrupted_save_keeps_the_previous_index(tmp_path, pool, embedder, monkeypatch):
    folder = tmp_path / "idx"
    DemoIndex.build(pool, embedder).save(folder)
    bigger = DemoIndex.build(make_pool(400, seed=9), embedder)

    monkeypatch.setattr(retrieval.storage, "write_file_atomic", _crash_on_meta(retrieval.storage.write_file_atomic))
    with pytest.raises(KeyboardInterrupt):
        bigger.save(folder)
    loaded = DemoIndex.load(folder, embedder)
    assert len(loaded) == len(pool) and loaded.pool.sha256 == pool.sha256


def _crash_on_meta(real):
    def write(path, writer):
        if path.name == "meta.json":
            raise KeyboardInterrupt
        return real(path, writer)
    return write


def test_add_examples_and_persist(tmp_path, pool, embedder):
    index = DemoIndex.build(make_pool(50, seed=3), embedder)
    old_hash = index.pool.sha256
    added = index.add([{"input": "totally new words here", "output": "x"}, index.pool.examples[0]])
    assert [e.id for e in added] == [50] and len(index) == 51
    assert index.pool.sha256 != old_hash
    (example, score), = index.nearest("totally new words here", 1)
    assert example.id == 50 and score == pytest.approx(1.0, abs=1e-5)
    index.save(tmp_path / "idx")
    assert len(DemoIndex.load(tmp_path / "idx", embedder)) == 51


def test_search_checks_k(pool, embedder):
    index = DemoIndex.build(pool, embedder)
    with pytest.raises(ValueError, match=r"k must be between 1 and the pool size \(300\), got 301"):
        index.search(embedder.embed(["film"]), 301)
