"""Resumable training checkpoints: the trainable weights, optimizer, scheduler, step and RNG state.

Checkpoints live in a hidden folder beside the adapter (`.NAME.run/step-000010/`), so the
registry never mistakes one for an adapter. Only the trainable (LoRA) parameters are stored, not
the frozen base: a checkpoint of the default model at the default rank 16 holds about 60 MB (the LoRA
weights and AdamW's two moments, fp32) instead of 500.
Each checkpoint is written with `publish`, so a crash while saving leaves the previous one usable.
This module does not decide when to save; the training loop does.

The weights and optimizer state go through torch's distributed state-dict API, which gathers
FSDP's shards into whole tensors on the main process and shards them again on load; for one
process or DDP it is the plain state dict with canonical names.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
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


def lock_file(output: Path) -> Path:
    output = Path(output)
    return output.parent / f".{output.name}.lock"


@contextlib.contextmanager
def run_lock(output: Path):
    """Be the only training run that writes `output` (its checkpoints, log and adapter): a second run
    under the name, started while this one holds the lock, stops with a ValueError instead of clearing
    this run's files. The lock goes with the process, however it ends; the file goes when the run
    ends (removed while still locked, and a lock taken on a file already removed is given up, so that
    no two runs ever hold one). Without `fcntl` (Windows), there is no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = lock_file(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tries = 0
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            tries += 1
            if tries < 20:  # perhaps `in_progress` looking for a moment: a run holds it for longer than a second
                time.sleep(0.05)
                continue
            raise ValueError(f"another training run is writing '{Path(output).name}' (process {holder or 'unknown'}); "
                             "wait for it to end, or choose another name") from None
        try:
            current = os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()  # the run that held it removed it meanwhile: take the new file
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()  # and with it the lock


def in_progress(output: Path) -> bool:
    """Whether a training run holds `output`'s lock now."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        handle = lock_file(output).open("r")  # never creates it: a run that ended has removed it
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared, and let go at once
        except BlockingIOError:
            return True
        except OSError:
            return False
    return False


def latest(output: Path) -> Path | None:
    folders = sorted(run_dir(output).glob("step-*"))
    return folders[-1] if folders else None


def step_of(folder: Path) -> int:
    """The step a checkpoint folder (`step-000010`) was written after."""
    return int(Path(folder).name.removeprefix("step-"))


FORMAT = 2
"""Version of the checkpoint layout: 2 keys the optimizer state by parameter name."""


def _optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer


def trainable_names(model) -> set[str]:
    """Canonical names of the parameters that receive gradients (DDP's `module.` left out; FSDP2
    keeps the names)."""
    return {name for name, parameter in getattr(model, "module", model).named_parameters() if parameter.requires_grad}


def gather(model, optimizer) -> tuple[dict, dict]:
    """The trainable weights and the optimizer state, whole and on the CPU, on the main process;
    the other processes get empty dicts. Every process calls it: under FSDP it is a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    # Frozen parameters are left out, but not the quantization state that 4-bit layers add to a state dict.
    trainable = trainable_names(model)
    weights = {name: value for name, value in get_model_state_dict(model, options=options).items() if name in trainable}
    return weights, get_optimizer_state_dict(model, _optimizer(optimizer), options=options)


def _numpy_rng_state() -> tuple:
    """numpy's global RNG state with its key array as a tensor, so the checkpoint loads without pickle."""
    import numpy as np
    import torch

    kind, keys, position, has_gauss, cached = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)


def save(output: Path, step: int, weights: dict, optimizer_state: dict, scheduler, run: dict | None = None) -> Path:
    """Write the checkpoint of `step` from `gather`'s results (main process only); keep the newest two.

    `run` describes the run (options and data) so that a resume can refuse different ones.
    """
    import torch

    state = {
        "format": FORMAT,
        "step": step,
        "run": run or {},
        "weights": weights,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_rng_state()},
    }
    folder = run_dir(output) / f"step-{step:06d}"
    publish(folder, lambda staging: torch.save(state, staging / STATE_FILE))
    for old in sorted(run_dir(output).glob("step-*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def load(folder: Path, model, optimizer, scheduler, run: dict | None = None) -> Resumed:
    """Restore a checkpoint into a model built and prepared the same way (every process calls it);
    names that do not match are an error, and so is a `run` description that differs from the one
    saved (where both have one)."""
    import numpy as np
    import torch

    # Tensors, numbers and tuples only: weights_only=True refuses anything that would run code.
    state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    saved = state.get("run") or {}  # empty in a checkpoint written before runs were recorded
    if "model" in saved:  # recorded as typed before 2026-11-28
        from bot.models import local_spec

        saved = {**saved, "model": local_spec(saved["model"])}
    # Keys only the checkpoint has are options that no longer count (the data's path, now its hash alone).
    changed = sorted(key for key in run if saved.get(key) != run[key]) if saved and run else []
    if changed:
        was = ", ".join(f"{key}={saved.get(key)!r}" for key in changed)
        now = ", ".join(f"{key}={run.get(key)!r}" for key in changed)
        raise ValueError(f"--resume: the checkpoint was made with {was}, but this run has {now}; "
                         "resume with the same options and data, or start over with --restart in place of --resume")
    if state.get("format") != FORMAT:
        raise ValueError(f"--resume: checkpoint {folder} was written by an older version of the trainer; "
                         "start over with --restart in place of --resume")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    trainable = trainable_names(model)
    unknown, missing = sorted(set(state["weights"]) - trainable), sorted(trainable - set(state["weights"]))
    if unknown or missing:
        raise ValueError(f"checkpoint {folder} does not fit this model: "
                         + (f"unknown parameters {unknown[:3]}" if unknown else f"no weights for {missing[:3]}"))
    whole = StateDictOptions(full_state_dict=True, strict=False)  # every process read the whole file
    set_model_state_dict(model, state["weights"], options=whole)
    # Like AdamW itself, this creates state for every parameter: LoRA steps all of them anyway.
    set_optimizer_state_dict(model, _optimizer(optimizer), state["optimizer"], options=whole)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    kind, keys, position, has_gauss, cached = state["rng"]["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    return Resumed(step=state["step"], folder=Path(folder))


def remove_all(output: Path) -> None:
    shutil.rmtree(run_dir(output), ignore_errors=True)
