"""The real embedder (all-MiniLM-L6-v2) over SST-2: FAISS top-k equals numpy cosine brute force.

Embedding the 6,920 training sentences takes most of this file's time (~20-40 s on 2 cores);
the vectors are cached per session so every test reuses them.
"""

import json

import numpy as np
import pytest
from conftest import SHARED_DATA

from retrieval.embedder import DEFAULT_HUB_ID, Embedder, load_embedder
from retrieval.index import DemoIndex
from retrieval.pool import load_pool
from retrieval.select import select_demos

pytestmark = pytest.mark.integration
TRAIN = SHARED_DATA / "sst2/train.jsonl"
DEV = SHARED_DATA / "sst2/dev.jsonl"


class CachedEmbedder(Embedder):
    """The real embedder, remembering each text's vector so the reference costs nothing extra."""

    def __init__(self, inner: Embedder):
        self.inner, self.name, self.dim, self.batch_size = inner, inner.name, inner.dim, 256
        self.cache: dict[str, np.ndarray] = {}

    def embed_batch(self, texts):
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.inner.embed(missing, show_progress=False)))
        return np.stack([self.cache[t] for t in texts])


@pytest.fixture(scope="session")
def sst2():
    if not TRAIN.is_file():
        pytest.skip(f"{TRAIN} is not there")
    embedder = CachedEmbedder(load_embedder("default"))
    pool = load_pool(TRAIN)
    return DemoIndex.build(pool, embedder), embedder


def dev_queries(n: int) -> list[str]:
    lines = DEV.read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line)["input"] for line in lines]


def test_topk_equals_numpy_cosine(sst2):
    index, embedder = sst2
    assert embedder.name == DEFAULT_HUB_ID and embedder.dim == 384
    vectors = embedder.embed([e.input for e in index.pool.examples])  # (n, 384), cached
    queries = embedder.embed(dev_queries(5))
    scores, ids = index.search(queries, 8)
    reference = queries @ vectors.T
    want = np.argsort(-reference, axis=1)[:, :8]
    assert np.array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(reference, want, axis=1), atol=1e-5)


def test_a_training_sentence_is_not_its_own_demo(sst2):
    index, _ = sst2
    query = index.pool.examples[10].input
    assert index.nearest(query, 1)[0][0].id == 10  # sanity check: it is its own nearest neighbour
    demos = select_demos(index, query, k=4)
    assert 10 not in [d.id for d in demos] and len(demos) == 4


def test_reload_with_the_real_embedder(sst2, tmp_path):
    index, embedder = sst2
    index.save(tmp_path / "sst2")
    loaded = DemoIndex.load(tmp_path / "sst2", embedder, pool=index.pool)
    queries = embedder.embed(dev_queries(3))
    assert np.array_equal(index.search(queries, 4)[1], loaded.search(queries, 4)[1])
