"""Where the service keeps its files: model caches, indexes, adapters, uploads.

Everything the app writes lives under one data home, `ICL_BOT_HOME` (default: `.data/` at the
repository root), so an operator can point it at a volume and the UI never writes elsewhere.
This module only names folders; it creates nothing at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_home() -> Path:
    """The root of everything the service writes."""
    return Path(os.environ.get("ICL_BOT_HOME", REPO_ROOT / ".data")).resolve()


def ensure_data_home() -> Path:
    """`data_home()`, created if missing; a ValueError naming it (and $ICL_BOT_HOME) if it cannot be.
    Entry points call this first, before a model loads for minutes only to fail at the first write."""
    home = data_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        source = "$ICL_BOT_HOME" if "ICL_BOT_HOME" in os.environ else "the data folder"
        raise ValueError(f"{source} {home} cannot be created: {error.strerror or error}") from error
    if not os.access(home, os.W_OK):
        raise ValueError(f"the data folder {home} is not writable; set ICL_BOT_HOME to a folder you can write")
    return home


def model_cache_dir() -> Path:
    """Dense safetensors copies of models that ship only as GGUF (overridable with `ICL_BOT_MODEL_CACHE`)."""
    return Path(os.environ.get("ICL_BOT_MODEL_CACHE", data_home() / "models")).resolve()


def adapters_dir() -> Path:
    """Trained LoRA adapters, one folder each (overridable with `ICL_BOT_ADAPTERS`)."""
    return Path(os.environ.get("ICL_BOT_ADAPTERS", data_home() / "adapters")).resolve()


def indexes_dir() -> Path:
    """FAISS indexes built from demonstration pools."""
    return data_home() / "indexes"

