"""How demonstrations and a query become prompt text, and how label continuations are tokenised.

Two styles:
- `plain` (the default): one block per demonstration, then the query with an empty label,

      Input: <demo input>\nLabel: <demo output>\n\n   (x k)
      Input: <query>\nLabel:

  and each label is scored as the continuation " " + label;
- `chat`: the demonstrations as user/assistant turns through the tokenizer's chat template, the
  query as the last user turn with the generation prompt, and each label scored as the
  assistant's answer.

A `Prompt` is split into the demonstration `prefix` and the rest, so that scorers can reuse the
prefix's KV cache for every query that shares it. This module builds text and token ids; it never
runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lab.errors import LabError

STYLES = ("plain", "chat")


@dataclass(frozen=True)
class Demo:
    """One demonstration shown to the model."""

    input: str
    output: str


@dataclass(frozen=True)
class Prompt:
    """A prompt as `prefix + query`; `prefix` is shared by every query with the same demonstrations."""

    prefix: str
    """The demonstrations' text ("" for zero-shot, or when the style cannot split the prompt)."""
    query: str
    """The rest: the query text up to where the answer starts."""

    @property
    def text(self) -> str:
        return self.prefix + self.query


@dataclass(frozen=True)
class PromptFormat:
    """Turns demonstrations and a query into a `Prompt`, and a label into its continuation text."""

    style: str = "plain"
    """`plain` (Input:/Label: blocks) or `chat` (the tokenizer's chat template)."""

    def __post_init__(self):
        if self.style not in STYLES:
            raise LabError(f"unknown prompt style '{self.style}'; choose one of: {', '.join(STYLES)}")

    def build(self, tokenizer, demos: Sequence[Demo], query: str) -> Prompt:
        if self.style == "plain":
            return Prompt(_plain_block(demos), f"Input: {query}\nLabel:")
        return self._chat(tokenizer, demos, query)

    def continuation(self, label: str) -> str:
        """The text scored after the prompt for `label`."""
        return " " + label if self.style == "plain" else label

    def probe_prefix(self, demos: Sequence[Demo]) -> str:
        """Text after which the model writes a new input (Lu et al.'s probe generation).

        Always the plain form: probes only need to read like the task's inputs, whatever the style.
        """
        return _plain_block(demos) + "Input:"

    def _chat(self, tokenizer, demos: Sequence[Demo], query: str) -> Prompt:
        turns = _turns(demos)
        full = tokenizer.apply_chat_template(
            turns + [{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True
        )
        prefix = tokenizer.apply_chat_template(turns, tokenize=False) if turns else ""
        if not full.startswith(prefix):
            # Some templates render earlier turns differently once more follow; then nothing is shared.
            prefix = ""
        return Prompt(prefix, full[len(prefix):])


def _plain_block(demos: Sequence[Demo]) -> str:
    return "".join(f"Input: {demo.input}\nLabel: {demo.output}\n\n" for demo in demos)


def _turns(demos: Sequence[Demo]) -> list[dict]:
    turns = []
    for demo in demos:
        turns.append({"role": "user", "content": demo.input})
        turns.append({"role": "assistant", "content": demo.output})
    return turns


def encode_ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as the model reads it (with the tokenizer's own special tokens, if any)."""
    return list(tokenizer(text)["input_ids"])


def continuation_ids(tokenizer, prompt_ids: list[int], prompt_text: str, continuation: str) -> list[int]:
    """Token ids of `continuation` after `prompt_text`: the tail of the tokenised whole.

    The prompt's own tokens must stay a prefix of the whole's tokens, otherwise the label would
    change how the prompt is read and no score of "the label after this prompt" exists.
    """
    whole = encode_ids(tokenizer, prompt_text + continuation)
    if whole[: len(prompt_ids)] != prompt_ids or len(whole) == len(prompt_ids):
        raise LabError(
            f"label continuation {continuation!r} merges with the prompt's last tokens when tokenised; "
            "use labels that start a new word, or the other prompt style"
        )
    return whole[len(prompt_ids):]
