"""The reference scorer: one forward pass per prompt and label, no cache, no batching, no padding.

Slow on purpose and short enough to check by eye. Tests and `bench/lab.py` hold the cached,
batched scorer (`lab.scorer`) to its numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lab.prompt import Prompt
from lab.scorer import encode


def naive_score(model, tokenizer, prompts: Sequence[Prompt], continuations: Sequence[str]) -> np.ndarray:
    """(len(prompts), len(continuations)) summed log-probabilities of each continuation after its prompt."""
    import torch

    scores = np.zeros((len(prompts), len(continuations)))
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            encoded = encode(tokenizer, prompt, continuations)
            for j, label_ids in enumerate(encoded.continuation_ids):
                ids = encoded.prompt_ids + label_ids
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                start = len(encoded.prompt_ids) - 1
                scores[i, j] = sum(float(logprobs[start + t, token]) for t, token in enumerate(label_ids))
    return scores
