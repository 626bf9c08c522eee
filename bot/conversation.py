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
        content = turn_text(turn.get("content"))
        if turn.get("role") in ("user", "assistant") and content is not None:
            messages.append({"role": turn["role"], "content": content})
    messages.append({"role": "user", "content": message})
    return messages


def turn_text(content) -> str | None:
    """The text of a history message's content: a string (an API client's), or a list of parts such
    as `{"type": "text", "text": ...}` (what Gradio 6's chatbot sends from the browser); None where
    it holds no text (a file, a component)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
        return "\n".join(texts) if texts else None
    return None


WORD_JOINER = "\u2060"
"""Invisible, and no tokenizer's special token contains it."""


def neutralize_special_tokens(tokenizer, messages: list[dict]) -> list[dict]:
    """The messages with every special token string in their text (`<|im_end|>`, `<|im_start|>`...)
    broken by an invisible character, so that typed text stays text: it cannot end a turn or start a
    forged system turn. The template's own special tokens are added afterwards, untouched."""
    specials = {str(token) for token in tokenizer.all_special_tokens}
    specials |= {str(added) for added in getattr(tokenizer, "added_tokens_decoder", {}).values()
                 if getattr(added, "special", False)}
    specials = sorted((token for token in specials if len(token) > 1), key=len, reverse=True)
    if not specials:
        return messages

    def neutral(text: str) -> str:
        for token in specials:
            if token in text:
                text = text.replace(token, token[0] + WORD_JOINER + token[1:])
        return text

    return [{**m, "content": neutral(m["content"])} if isinstance(m.get("content"), str) else m for m in messages]


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
    PromptTooLong says by how much. The fewest exchanges to drop are found by bisection (dropping
    more never adds tokens), so a long history costs a few tokenisations rather than one per exchange.
    """
    messages = neutralize_special_tokens(tokenizer, messages)
    head = [m for m in messages[:1] if m["role"] == "system"]
    body = messages[len(head):]
    starts = [0]  # where the kept messages begin after dropping 0, 1, 2... exchanges
    while len(body) - starts[-1] > 1:
        rest = body[starts[-1]:]
        # One exchange is a user message and the assistant's answer after it.
        starts.append(starts[-1] + (2 if len(rest) > 2 and rest[1]["role"] == "assistant" else 1))
    counted: dict[int, int] = {}

    def tokens(dropped: int) -> int:
        if dropped not in counted:
            counted[dropped] = count_prompt_tokens(tokenizer, head + body[starts[dropped]:])
        return counted[dropped]

    low, high = 0, len(starts) - 1
    if tokens(low) <= budget:  # the usual case: everything fits
        high = low
    elif tokens(high) > budget:
        try:  # some chat templates refuse a conversation of a system prompt alone
            system = count_prompt_tokens(tokenizer, head) if head else 0
        except Exception:
            system = 0
        what = "the message is too long: the prompt needs"
        if system > budget / 2:  # most of it is the system prompt: say so, not "the message"
            what = f"the system prompt is too long: it takes {system} tokens, and the prompt needs"
        raise PromptTooLong(
            f"{what} {tokens(high)} tokens but only {budget} fit in the context window after room for the answer"
        )
    while low < high:  # the fewest exchanges dropped such that the rest fits
        middle = (low + high) // 2
        if tokens(middle) <= budget:
            high = middle
        else:
            low = middle + 1
    return FittedPrompt(messages=head + body[starts[low]:], prompt_tokens=tokens(low), dropped_turns=low)
