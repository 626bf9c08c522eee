"""Batched label scoring with a shared KV cache for the demonstrations.

`CachedScorer.score(prompts, continuations)` returns, for every prompt, the summed log-probability
of each continuation (a label's text, any number of tokens). It gives the same numbers as scoring
each prompt + continuation on its own (`lab.naive`), only faster:

- prompts that share a demonstration prefix run that prefix once; its KV cache is repeated along
  the batch for every batch of queries that follow it;
- all labels whose tokens differ only in the last one share one row: the row holds the query and
  the labels' common first tokens, and the last position's distribution scores every such label at
  once (one row per query for single-token labels);
- rows are left-padded with explicit position ids, so the positions of real tokens are those of
  the unpadded prompt, and only the last few positions go through the LM head (`logits_to_keep`).

Token ids are always those of the whole prompt text: the cached part is the longest run of
tokens that the prefix and every prompt of the group agree on, so a BPE merge across the
prefix/query boundary cannot change what the model reads. This module scores; it knows nothing
about demonstrations, labels' meaning or accuracy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lab.prompt import Prompt, continuation_ids, encode_ids


@dataclass
class Encoded:
    """A prompt's token ids and each continuation's ids after it."""

    prompt_ids: list[int]
    continuation_ids: list[list[int]]


@dataclass
class Row:
    """One model input: the uncached tail of a prompt plus a label stem, and the labels it scores."""

    item: int
    tokens: list[int]
    labels: list[int]
    """Indices of the continuations scored by this row; all share the row's stem."""
    stem: int
    """Number of continuation tokens before the last one (the same for every label of the row)."""


def encode(tokenizer, prompt: Prompt, continuations: Sequence[str]) -> Encoded:
    prompt_ids = encode_ids(tokenizer, prompt.text)
    return Encoded(prompt_ids, [continuation_ids(tokenizer, prompt_ids, prompt.text, c) for c in continuations])


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def make_rows(item: int, encoded: Encoded, cached: int) -> list[Row]:
    """Rows for one prompt whose first `cached` tokens come from the cache."""
    by_stem: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for label, ids in enumerate(encoded.continuation_ids):
        by_stem[tuple(ids[:-1])].append(label)
    tail = encoded.prompt_ids[cached:]
    return [Row(item, tail + list(stem), labels, len(stem)) for stem, labels in by_stem.items()]


class CachedScorer:
    """Scores continuations after prompts on one model, reusing demonstration prefixes' KV caches."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> np.ndarray:
        """(len(prompts), len(continuations)) summed log-probabilities, float64."""
        import torch

        encoded = [encode(self.tokenizer, prompt, continuations) for prompt in prompts]
        scores = np.zeros((len(prompts), len(continuations)))
        with torch.inference_mode():
            for prefix, items in self._groups(prompts).items():
                self._score_group(prefix, items, encoded, scores)
        return scores

    def _groups(self, prompts: Sequence[Prompt]) -> dict[str, list[int]]:
        """Prompt indices by shared prefix; prompts alone with their prefix go uncached, under ""."""
        groups: dict[str, list[int]] = defaultdict(list)
        for index, prompt in enumerate(prompts):
            groups[prompt.prefix].append(index)
        merged: dict[str, list[int]] = defaultdict(list)
        for prefix, items in groups.items():
            merged[prefix if len(items) > 1 else ""].extend(items)
        return merged

    def _score_group(self, prefix: str, items: list[int], encoded: list[Encoded], scores: np.ndarray) -> None:
        cached = self._cached_length(prefix, [encoded[i].prompt_ids for i in items])
        past = self._prefix_cache(encoded[items[0]].prompt_ids[:cached]) if cached else None
        rows = [row for i in items for row in make_rows(i, encoded[i], cached)]
        rows.sort(key=lambda row: len(row.tokens))
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            logprobs = self._forward(batch, past, cached)
            for b, row in enumerate(batch):
                self._collect(row, logprobs[b], encoded[row.item], scores)

    def _cached_length(self, prefix: str, prompt_ids: list[list[int]]) -> int:
        if not prefix:
            return 0
        prefix_ids = encode_ids(self.tokenizer, prefix)
        # At least one prompt token must stay uncached: its logits score the first label token.
        return min(min(common_length(prefix_ids, ids), len(ids) - 1) for ids in prompt_ids)

    def _prefix_cache(self, ids: list[int]) -> list[tuple]:
        """Per layer (keys, values), each (1, kv_heads, len(ids), head_dim)."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _forward(self, rows: list[Row], past: list[tuple] | None, cached: int):
        """Log-softmax over the vocabulary at each row's last `stem + 1` positions: (B, keep, vocab)."""
        import torch
        from transformers import DynamicCache

        width = max(len(row.tokens) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, width - len(row.tokens):] = torch.tensor(row.tokens)
            mask[b, width - len(row.tokens):] = 1
        positions = cached + (mask.cumsum(-1) - 1).clamp(min=0)
        attention = torch.cat([torch.ones((len(rows), cached), dtype=torch.long), mask], dim=1)
        cache = None
        if past is not None:
            expanded = [(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1)) for k, v in past]
            cache = DynamicCache(expanded, config=self.model.config)
        keep = max(row.stem for row in rows) + 1
        out = self.model(
            input_ids=ids, attention_mask=attention, position_ids=positions,
            cache=cache, use_cache=cache is not None, logits_to_keep=keep,
        )
        return torch.log_softmax(out.logits.float(), dim=-1)

    @staticmethod
    def _collect(row: Row, logprobs, encoded: Encoded, scores: np.ndarray) -> None:
        """Sum each label's token log-probs from the tail positions of one row: logprobs (keep, vocab)."""
        first = logprobs.shape[0] - row.stem - 1
        for label in row.labels:
            ids = encoded.continuation_ids[label]
            scores[row.item, label] = sum(float(logprobs[first + j, token]) for j, token in enumerate(ids))
