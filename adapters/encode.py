"""Turn conversations into training tensors: token ids, and labels that cover only the assistant.

Each conversation is rendered with the tokenizer's own chat template. The tokens of an assistant
turn are found by rendering the conversation up to that turn twice, with the generation prompt
(everything the model is shown) and with the turn itself (what it must write): the difference is
the answer, its end-of-turn token included. Everything else gets the label -100 and no loss.

This module knows nothing about models or optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100
"""Label of a token that carries no loss (prompt, system, user turns, padding)."""


class EncodeError(ValueError):
    """A chat template that does not render a conversation as a prefix of its continuation."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    """Same length as input_ids; IGNORE where the token is not the assistant's."""

    def __post_init__(self):
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"labels must match input_ids in length, got {len(self.labels)} and {len(self.input_ids)}")

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def _render(tokenizer, messages: list[dict], prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True, return_dict=False)
    return list(ids)


def encode_conversation(tokenizer, messages: list[dict], max_length: int | None) -> Example:
    """Tokens of the whole conversation with labels on the assistant turns, cut to `max_length` (None: not cut)."""
    input_ids: list[int] = []
    labels: list[int] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        shown = _render(tokenizer, messages[:index], prompt=True)
        written = _render(tokenizer, messages[: index + 1], prompt=False)
        if written[: len(shown)] != shown or shown[: len(input_ids)] != input_ids:
            raise EncodeError("the chat template does not render earlier turns as a prefix of later ones")
        labels += [IGNORE] * (len(shown) - len(input_ids)) + written[len(shown):]
        input_ids = written
    return Example(input_ids=input_ids[:max_length], labels=labels[:max_length])


@dataclass
class Fitted:
    """Conversations encoded within a length limit, and what the limit cost."""

    kept: list[Example]
    """Those with some answer left, cut to the limit."""
    dropped: int
    """Left out: not one answer token fits."""
    cut: int
    """Kept, but with part of their answers cut away."""


def encode_fitting(tokenizer, conversations: list[list[dict]], max_length: int) -> Fitted:
    """Encode every conversation, leaving out those whose answer was cut away entirely, and count the losses."""
    kept, dropped, cut = [], 0, 0
    for messages in conversations:
        whole = encode_conversation(tokenizer, messages, None)
        example = Example(input_ids=whole.input_ids[:max_length], labels=whole.labels[:max_length])
        if not example.trained_tokens:
            dropped += 1
            continue
        cut += example.trained_tokens < whole.trained_tokens
        kept.append(example)
    return Fitted(kept, dropped, cut)


def encode_all(tokenizer, conversations: list[list[dict]], max_length: int) -> list[Example]:
    """Encode every conversation, leaving out those whose answer was cut away entirely."""
    return encode_fitting(tokenizer, conversations, max_length).kept


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Concatenate examples into sequences of at most `max_length` tokens, in order.

    Packed examples attend to the ones before them in the same sequence; that costs a little
    accuracy and saves the padding that short instruction data otherwise wastes.
    """
    packed: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    for example in examples:
        if ids and len(ids) + len(example.input_ids) > max_length:
            packed.append(Example(ids, labels))
            ids, labels = [], []
        ids = ids + example.input_ids
        labels = labels + example.labels
    if ids:
        packed.append(Example(ids, labels))
    return packed


def collate(examples: list[Example], pad_token_id: int) -> dict:
    """Right-pad a batch to its longest example: `input_ids`, `attention_mask`, `labels` tensors."""
    import torch

    width = max(len(example.input_ids) for example in examples)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for example in examples:
        padding = width - len(example.input_ids)
        batch["input_ids"].append(example.input_ids + [pad_token_id] * padding)
        batch["attention_mask"].append([1] * len(example.input_ids) + [0] * padding)
        batch["labels"].append(example.labels + [IGNORE] * padding)
    return {key: torch.tensor(value) for key, value in batch.items()}


def split(items: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random split into (train, eval); eval gets round(n * fraction) items, at least one if asked."""
    import random

    if eval_fraction <= 0:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = max(1, round(len(items) * eval_fraction))
    held_out = set(order[:held])
    return [x for i, x in enumerate(items) if i not in held_out], [x for i, x in enumerate(items) if i in held_out]
