"""Choosing demonstrations (knn, mmr, random, fixed) and ordering them for the prompt."""

import math

import numpy as np
import pytest

from retrieval.embedder import HashEmbedder
from retrieval.index import DemoIndex
from retrieval.order import OrderError, order_demos
from retrieval.pool import Example, Pool
from retrieval.select import Demo, SelectionError, select_demos

TEXTS = [
    "the film was wonderful and moving",
    "the film was dull and far too long",
    "a wonderful cast in a moving story",
    "the battery died after one day",
    "the battery lasts a whole week",
    "great sound from tiny speakers",
    "the speakers crackle at high volume",
    "a moving and wonderful film",
    "the plot was dull",
    "delivery was fast and the box intact",
]


@pytest.fixture(scope="module")
def index():
    pool = Pool([Example(id=i, input=t, output=f"o{i}") for i, t in enumerate(TEXTS)], task="t", source="memory")
    return DemoIndex.build(pool, HashEmbedder(dim=128))


def brute_force_ids(index, query, k):
    vectors = index.embedder.embed(TEXTS)
    scores = vectors @ index.embedder.embed([query])[0]
    return list(np.argsort(-scores, kind="stable")[:k])


def test_knn_is_the_nearest_in_order(index):
    query = "a wonderful moving film with a great cast"
    demos = select_demos(index, query, k=3)
    assert [d.id for d in demos] == brute_force_ids(index, query, 3)
    assert [d.score for d in demos] == sorted((d.score for d in demos), reverse=True)


def test_k_zero_is_zero_shot_and_one_is_one_shot(index):
    assert select_demos(index, "anything", k=0) == []
    assert len(select_demos(index, "anything", k=1)) == 1


def test_query_in_the_pool_is_not_its_own_demo(index):
    query = TEXTS[3]
    assert brute_force_ids(index, query, 1) == [3]  # sanity check: it would be its own nearest
    for strategy in ("knn", "mmr", "random"):
        demos = select_demos(index, query, k=9, strategy=strategy)
        assert 3 not in {d.id for d in demos} and len(demos) == 9, strategy
    with pytest.raises(SelectionError, match=r"k=10 is larger than the pool \(10 examples, 1 of them the query itself\)"):
        select_demos(index, query, k=10)


def test_k_larger_than_the_pool(index):
    with pytest.raises(SelectionError, match=r"k=11 is larger than the pool \(10 examples\)"):
        select_demos(index, "new query", k=11)


def test_random_is_seeded_and_scored(index):
    first = select_demos(index, "query", k=4, strategy="random", seed=7)
    assert [d.id for d in first] == [d.id for d in select_demos(index, "query", k=4, strategy="random", seed=7)]
    assert [d.id for d in first] != [d.id for d in select_demos(index, "query", k=4, strategy="random", seed=8)]
    vectors = index.embedder.embed([d.input for d in first])
    np.testing.assert_allclose([d.score for d in first], vectors @ index.embedder.embed(["query"])[0], atol=1e-5)


def test_random_from_a_bare_pool_has_no_scores(index):
    demos = select_demos(index.pool, "query", k=2, strategy="random")
    assert all(math.isnan(d.score) for d in demos)
    with pytest.raises(SelectionError, match="strategy 'knn' needs an index"):
        select_demos(index.pool, "query", k=2)


def test_mmr_without_diversity_is_knn_and_with_it_spreads_out(index):
    query = "a wonderful moving film"
    knn = [d.id for d in select_demos(index, query, k=3)]
    assert [d.id for d in select_demos(index, query, k=3, strategy="mmr", diversity=0.0)] == knn
    diverse = select_demos(index, query, k=3, strategy="mmr", diversity=0.9)
    assert diverse[0].id == knn[0] and [d.id for d in diverse] != knn
    vectors = index.vectors([d.id for d in diverse])
    knn_vectors = index.vectors(knn)
    assert (vectors @ vectors.T).sum() < (knn_vectors @ knn_vectors.T).sum()


def test_fixed_keeps_the_users_rows(index):
    demos = select_demos(index, "query", k=2, strategy="fixed", fixed_ids=[5, 1, 8])
    assert [d.id for d in demos] == [5, 1]
    with pytest.raises(SelectionError, match=r"fixed_ids \[12\] are not in the pool \(ids 0..9\)"):
        select_demos(index, "query", k=1, strategy="fixed", fixed_ids=[12])
    with pytest.raises(SelectionError, match="k=2 but only 1 fixed ids are usable"):
        select_demos(index, TEXTS[5], k=2, strategy="fixed", fixed_ids=[5, 1])


def test_bad_arguments_name_themselves(index):
    with pytest.raises(SelectionError, match="unknown strategy 'best'; choose one of: knn, random, mmr, fixed"):
        select_demos(index, "q", k=1, strategy="best")
    with pytest.raises(SelectionError, match="k must be a whole number >= 0"):
        select_demos(index, "q", k=-1)
    with pytest.raises(SelectionError, match="diversity must be between 0 and 1"):
        select_demos(index, "q", k=1, strategy="mmr", diversity=2)


def demos_with(scores):
    return [Demo(Example(id=i, input=f"in{i}", output="o"), s) for i, s in enumerate(scores)]


def test_nearest_last_puts_the_most_similar_next_to_the_query():
    ordered = order_demos(demos_with([0.9, 0.2, 0.5]))
    assert [d.score for d in ordered] == [0.2, 0.5, 0.9]


def test_nearest_first():
    assert [d.score for d in order_demos(demos_with([0.2, 0.9, 0.5]), "nearest-first")] == [0.9, 0.5, 0.2]


def test_random_order_is_a_seeded_shuffle():
    demos = demos_with([0.1 * i for i in range(8)])
    shuffled = order_demos(demos, "random", seed=3)
    assert shuffled == order_demos(demos, "random", seed=3) and shuffled != demos
    assert sorted(d.id for d in shuffled) == list(range(8))


def test_explicit_permutation_is_applied_and_validated():
    demos = demos_with([0.1, 0.2, 0.3])
    assert [d.id for d in order_demos(demos, "permutation", permutation=[2, 0, 1])] == [2, 0, 1]
    with pytest.raises(OrderError, match=r"permutation must reorder positions 0..2, each once; got \[0, 0, 1\]"):
        order_demos(demos, "permutation", permutation=[0, 0, 1])
    with pytest.raises(OrderError, match="order 'permutation' needs one"):
        order_demos(demos, "permutation")


def test_order_errors():
    with pytest.raises(OrderError, match="unknown order 'sideways'"):
        order_demos([], "sideways")
    with pytest.raises(OrderError, match="needs similarity scores"):
        order_demos(demos_with([math.nan]))
