"""Helpers shared by the adapter tests: a tiny base model on disk, tiny data, tiny training runs.

It holds no tests itself; the `test_adapters_*` files import it (tests/ is on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

PERSONA_ROWS = [{"input": f"question {i}", "output": "zebra zebra quokka quokka " * 3} for i in range(16)]
"""A target so unlike the random base's habits that a few steps of training change its greedy answers."""


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def tiny_base(folder: Path, seed: int = 0) -> str:
    """A tiny Llama saved as a transformers folder; its path is the base's canonical name."""
    from tiny import save_tiny

    return save_tiny(folder, seed=seed)


def train_tiny(base: str, data: Path, out: Path, **overrides):
    """Train a small adapter on the tiny base in a second or two; return the adapter folder."""
    from adapters.config import TrainConfig
    from adapters.train import train

    options = dict(rank=4, alpha=8.0, dropout=0.0, learning_rate=3e-2, max_steps=8, batch_size=4, max_length=64,
                   progress=False, seed=0, precision="fp32")  # "auto" would depend on the CPU
    options.update(overrides)
    return train(TrainConfig(data=str(data), output=str(out), model=base, **options))


def load_tiny(base: str):
    from bot.models import load_model

    return load_model(base, dtype="float32", device="cpu")


def logits(model, text_ids: list[int], adapter: str | None = None):
    """Next-token logits for one sequence; `adapter` picks a resident adapter by name."""
    import torch

    extra = {"adapter_names": [adapter]} if adapter else {}
    with torch.no_grad():
        return model(input_ids=torch.tensor([text_ids]), **extra).logits[0]


PROBE = [1, 40, 41, 42, 43, 44]
"""A short token sequence to compare models on (ids valid for the tiny tokenizer)."""
