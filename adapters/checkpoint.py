"""Resumable training checkpoints: the trainable weights, optimizer, scheduler, step and RNG state.

Checkpoints live in a hidden folder beside the adapter (`.NAME.run/step-000010/`), so the
registry never mistakes one for an adapter. Only the trainable (LoRA) parameters are stored, not
the frozen base, which keeps a checkpoint of the default model near 20 MB instead of 500.
Each checkpoint is written with `publish`, so a crash while saving leaves the previous one usable.
This module does not decide when to save; the training loop does.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from adapters.publish import publish

STATE_FILE = "state.pt"


@dataclass
class Resumed:
    step: int
    """Optimizer steps already taken."""
    folder: Path


def run_dir(output: Path) -> Path:
    output = Path(output)
    return output.parent / f".{output.name}.run"


def latest(output: Path) -> Path | None:
    folders = sorted(run_dir(output).glob("step-*"))
    return folders[-1] if folders else None


def trainable_state(model) -> dict:
    """The parameters that receive gradients, by name, on the CPU."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def _numpy_rng_state() -> tuple:
    """numpy's global RNG state with its key array as a tensor, so the checkpoint loads without pickle."""
    import numpy as np
    import torch

    kind, keys, position, has_gauss, cached = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)


def save(output: Path, step: int, model, optimizer, scheduler, run: dict | None = None) -> Path:
    """Write the checkpoint of `step` (call on the main process only) and keep just the newest two.

    `run` describes the run (options and data) so that a resume can refuse different ones.
    """
    import torch

    state = {
        "step": step,
        "run": run or {},
        "weights": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_rng_state()},
    }
    folder = run_dir(output) / f"step-{step:06d}"
    publish(folder, lambda staging: torch.save(state, staging / STATE_FILE))
    for old in sorted(run_dir(output).glob("step-*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def load(folder: Path, model, optimizer, scheduler, run: dict | None = None) -> Resumed:
    """Restore a checkpoint into a model built the same way; names that do not match are an error,
    and so is a `run` description that differs from the one saved (where both have one)."""
    import numpy as np
    import torch

    # Tensors, numbers and tuples only: weights_only=True refuses anything that would run code.
    state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    saved = state.get("run") or {}  # empty in a checkpoint written before runs were recorded
    changed = sorted(key for key in saved.keys() | run.keys() if saved.get(key) != run.get(key)) if saved and run else []
    if changed:
        was = ", ".join(f"{key}={saved.get(key)!r}" for key in changed)
        now = ", ".join(f"{key}={run.get(key)!r}" for key in changed)
        raise ValueError(f"--resume: the checkpoint was made with {was}, but this run has {now}; "
                         "resume with the same options and data, or start over without --resume")
    parameters = dict(model.named_parameters())
    missing = sorted(set(state["weights"]) - set(parameters))
    if missing:
        raise ValueError(f"checkpoint {folder} does not fit this model: unknown parameters {missing[:3]}")
    with torch.no_grad():
        for name, value in state["weights"].items():
            parameters[name].copy_(value.to(parameters[name].device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    kind, keys, position, has_gauss, cached = state["rng"]["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    return Resumed(step=state["step"], folder=Path(folder))


def remove_all(output: Path) -> None:
    shutil.rmtree(run_dir(output), ignore_errors=True)
