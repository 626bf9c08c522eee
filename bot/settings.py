"""Sampling settings for one request, validated once so every entry point gives the same messages."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MAX_NEW_TOKENS = 8192
"""Most tokens one answer may ask for."""
MAX_SEED = 2**63 - 1
"""Largest seed torch takes as a signed 64-bit number."""
MAX_TEMPERATURE = 2.0
"""Highest sampling temperature: OpenAI's API limit, and the sliders' in the UI."""
MAX_BIAS = 100.0
"""Largest logit bias either way, OpenAI's limit: -100 bans a token, +100 all but forces it."""
MAX_BIASED_TOKENS = 300
"""Most tokens one request may bias, as OpenAI allows."""
MAX_PENALTY = 2.0
"""Largest presence or frequency penalty either way, OpenAI's limit."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    """Most tokens to generate for the answer."""
    temperature: float = 0.0
    """0 is greedy decoding; above 0 (at most 2) samples from the softened distribution."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    seed: int | None = None
    """Seed for sampling, so a sampled answer can be reproduced; ignored when greedy."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to those tokens' logits before each choice, greedy or sampled
    (OpenAI's `logit_bias`); the ids are checked against the vocabulary where it is known."""
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token the answer has used so far (OpenAI's; -2 to 2)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once for each time the answer has used it so far (OpenAI's; -2 to 2).
    Both penalties, like the bias, apply before the temperature and count only the answer's tokens."""

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be a whole number, got {self.max_new_tokens!r}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be between 0 and {MAX_TEMPERATURE:g}, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}, got {self.seed!r}")
        if len(self.logit_bias) > MAX_BIASED_TOKENS:
            raise ValueError(f"logit_bias takes at most {MAX_BIASED_TOKENS} tokens, got {len(self.logit_bias)}")
        for token, bias in self.logit_bias:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise ValueError(f"logit_bias keys must be token ids (whole numbers from 0), got {token!r}")
            if not (math.isfinite(bias) and -MAX_BIAS <= bias <= MAX_BIAS):
                raise ValueError(f"logit_bias values must be between -{MAX_BIAS:g} and {MAX_BIAS:g}, got {bias} "
                                 f"for token {token}")

        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and -MAX_PENALTY <= value <= MAX_PENALTY):
                raise ValueError(f"{name} must be between -{MAX_PENALTY:g} and {MAX_PENALTY:g}, got {value!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def seed_moved_by(self, offset: int) -> GenerationSettings:
        """These settings with the seed moved on by `offset` (wrapping within the seed range), for the
        offset-th of several draws that must differ; the same settings without a seed or at offset 0."""
        if self.seed is None or offset == 0:
            return self
        return replace(self, seed=(self.seed + offset) % (MAX_SEED + 1))

    @property
    def shapes_logits(self) -> bool:
        """Whether a bias or a penalty changes the model's logits before each choice."""
        return bool(self.logit_bias) or self.presence_penalty != 0 or self.frequency_penalty != 0

    def generate_kwargs(self) -> dict:
        """Keyword arguments for `model.generate`."""
        bias = {"sequence_bias": [[[token], float(value)] for token, value in self.logit_bias]} if self.logit_bias else {}
        if self.presence_penalty or self.frequency_penalty:
            from transformers import LogitsProcessorList

            from bot.generation import OccurrencePenalty

            bias["logits_processor"] = LogitsProcessorList([OccurrencePenalty(self.presence_penalty,
                                                                              self.frequency_penalty)])
        if self.greedy:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False, "temperature": None, "top_p": None,
                    "top_k": None, **bias}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": None, **bias}
