"""Short answers by generation: greedy for tasks scored by exact match, sampled for probe inputs.

Prompts are left-padded into batches; each answer is cut at its first newline, which is where a
plain-style prompt's label ends. This module does not judge answers (see `lab.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence


def generate_lines(
    model, tokenizer, texts: Sequence[str], max_new_tokens: int, batch_size: int = 8,
    temperature: float = 0.0, seed: int = 0,
) -> list[str]:
    """The first line the model writes after each text; greedy when temperature is 0."""
    import torch

    torch.manual_seed(seed)
    answers: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        encoded = _left_padded(tokenizer, batch)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            output = model.generate(
                **encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
            )
        new = output[:, encoded["input_ids"].shape[1]:]
        answers += [first_line(text) for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def first_line(text: str) -> str:
    """An answer as the lab reads it: the first line, after any leading newlines."""
    return text.strip("\n").split("\n")[0].strip()


def _left_padded(tokenizer, texts: list[str]) -> dict:
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return dict(tokenizer(texts, return_tensors="pt", padding=True))
    finally:
        tokenizer.padding_side = side
