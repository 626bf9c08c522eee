"""The cached, batched scorer against the naive per-prompt reference on a tiny model (fp32)."""

import numpy as np
import pytest

from lab.errors import LabError
from lab.naive import naive_score
from lab.prompt import Demo, Prompt, PromptFormat, continuation_ids, encode_ids
from lab.scorer import CachedScorer, common_length

DEMOS = [Demo("the quick brown fox", "positive"), Demo("a lazy dog", "negative"), Demo("great film", "positive")]
QUERIES = ["what a movie", "terrible", "the capital of France is Paris, a long query here", "ok"]
# Multi-token labels, two sharing their first tokens, one of a single token.
LABELS = ["positive", "negative", "great movie", "great film review", "fox", "the"]


def prompts(style="plain", demos=DEMOS, tokenizer=None):
    fmt = PromptFormat(style)
    return [fmt.build(tokenizer, demos, query) for query in QUERIES]


def continuations(style="plain"):
    return [PromptFormat(style).continuation(label) for label in LABELS]


def assert_same(tiny, batch_size, items, style="plain"):
    labels = continuations(style)
    expected = naive_score(tiny.model, tiny.tokenizer, items, labels)
    got = CachedScorer(tiny.model, tiny.tokenizer, batch_size).score(items, labels)
    assert np.abs(expected).min() > 0, "sanity check: scores are real log-probabilities"
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_labels_are_multi_token(tiny):
    lengths = [len(encode_ids(tiny.tokenizer, " " + label)) for label in LABELS]
    assert max(lengths) >= 3 and min(lengths) == 1


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_cached_equals_naive_with_shared_prefix(tiny, batch_size):
    assert_same(tiny, batch_size, prompts())


def test_cached_equals_naive_zero_shot_and_mixed_prefixes(tiny):
    mixed = prompts(demos=[]) + prompts(demos=DEMOS[:1])[:1] + prompts(demos=DEMOS[1:])
    assert_same(tiny, 4, mixed)


def test_cached_equals_naive_chat_style(tiny):
    items = prompts("chat", tokenizer=tiny.tokenizer)
    assert all(item.prefix for item in items), "sanity check: the chat prefix is shared"
    assert_same(tiny, 4, items, "chat")


def test_batches_really_pad(tiny):
    lengths = {len(encode_ids(tiny.tokenizer, p.text)) for p in prompts()}
    assert len(lengths) > 1


def test_prefix_boundary_merge_is_handled(tiny):
    # "\n\n" ends the prefix alone but may tokenise differently before "Input"; scores must not care.
    items = [Prompt("great film\n\n", "Input: ok\nLabel:"), Prompt("great film\n\n", "Input: bad\nLabel:")]
    assert_same(tiny, 2, items)


def test_common_length():
    assert common_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_length([], [1]) == 0


def test_label_merging_with_prompt_is_refused(tiny):
    ids = encode_ids(tiny.tokenizer, "the quick bro")
    with pytest.raises(LabError, match="merges with the prompt"):
        continuation_ids(tiny.tokenizer, ids, "the quick bro", "wn")


def test_unknown_style():
    with pytest.raises(LabError, match="unknown prompt style 'xml'"):
        PromptFormat("xml")
