"""Chat messages: build them from a UI history and fit them into the model's context window.

Token counts always come from the tokenizer's own chat template, so what is measured is exactly
what the model will read. This module does not generate.
"""

from __future__ import annotations

from dataclasses import dataclass


class PromptTooLong(ValueError):
    """Even the newest message alone does not fit the context window."""


@dataclass
class FittedPrompt:
    messages: list[dict]
    prompt_tokens: int
    dropped_turns: int
    """Earlier user/assistant exchanges left out to fit the window (oldest first)."""

    @property
    def notice(self) -> str | None:
        if not self.dropped_turns:
            return None
        turns = "turn" if self.dropped_turns == 1 else "turns"
        return f"The {self.dropped_turns} oldest conversation {turns} were dropped to fit the context window."


def build_messages(message: str, history: list[dict] | None = None, system: str | None = None) -> list[dict]:
    """System prompt, then earlier turns (`{"role", "content"}` dicts, Gradio's messages format), then the message."""
    messages = [{"role": "system", "content": system}] if system and system.strip() else []
    for turn in history or []:
        content = turn.get("content")
        if turn.get("role") in ("user", "assistant") and isinstance(content, str):
            messages.append({"role": turn["role"], "content": content})
    messages.append({"role": "user", "content": message})
    return messages


def count_prompt_tokens(tokenizer, messages: list[dict]) -> int:
    return len(render_prompt_ids(tokenizer, messages))


def render_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the templated conversation, ending where the assistant's answer begins."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return list(ids)


def fit_to_window(tokenizer, messages: list[dict], budget: int) -> FittedPrompt:
    """Drop the oldest exchanges until the prompt has at most `budget` tokens.

    The system prompt and the newest user message always stay; if those alone exceed the budget,
    PromptTooLong says by how much.
    """
    head = [m for m in messages[:1] if m["role"] == "system"]
    body = messages[len(head):]
    dropped = 0
    while True:
        tokens = count_prompt_tokens(tokenizer, head + body)
        if tokens <= budget:
            return FittedPrompt(messages=head + body, prompt_tokens=tokens, dropped_turns=dropped)
        if len(body) <= 1:
            raise PromptTooLong(
                f"the message is too long: the prompt needs {tokens} tokens but only {budget} fit "
                "in the context window after room for the answer"
            )
        # One exchange is a user message and the assistant's answer after it.
        cut = 2 if len(body) > 2 and body[1]["role"] == "assistant" else 1
        body = body[cut:]
        dropped += 1
