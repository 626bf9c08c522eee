"""The checks an adapter folder must pass before it may touch a model.

Each check raises AdapterError with a message the user can act on; none of them changes the model
or the folder. They run in this order, cheapest first: the files are there and are safetensors
(pickle `.bin` only when the caller opts in), the checksums match the metadata, the base model is
the one the adapter was trained on, and every LoRA weight names a linear layer of that base with
consistent shapes and rank. `registry.py` decides which folder to check; `host.py` loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

from adapters.metadata import CONFIG_FILE, AdapterMetadata, file_checksums

SAFE_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."


class AdapterError(ValueError):
    """An adapter that cannot be listed, resolved or loaded; the message says why and what exists."""


def check_files(folder: Path, allow_pickle: bool) -> Path:
    """The folder holds a config and one weight file in an allowed format; return the weight file."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise AdapterError(f"adapter '{folder.name}' is missing {CONFIG_FILE} in {folder}")
    if (folder / SAFE_WEIGHTS).is_file():
        return folder / SAFE_WEIGHTS
    if (folder / PICKLE_WEIGHTS).is_file():
        if not allow_pickle:
            raise AdapterError(
                f"adapter '{folder.name}' ships pickle weights ({PICKLE_WEIGHTS}), which can run code when loaded; "
                "convert it to safetensors (in Python, AdapterRegistry(allow_pickle=True) opts in if you trust its source)"
            )
        return folder / PICKLE_WEIGHTS
    raise AdapterError(f"adapter '{folder.name}' is missing its weights ({SAFE_WEIGHTS}) in {folder}")


def check_inside(path: Path, root: Path) -> None:
    """`path` and every file in it resolve inside `root`: no symlink leads out of the adapters directory."""
    root = Path(root).resolve()
    for candidate in [Path(path), *Path(path).rglob("*")]:
        if not candidate.resolve().is_relative_to(root):
            raise AdapterError(f"'{candidate}' leads outside the adapters directory {root} (a symlink?); refusing it")


def check_checksums(folder: Path, metadata: AdapterMetadata) -> None:
    actual = file_checksums(folder)
    for name, expected in metadata.checksums.items():
        if name not in actual:
            raise AdapterError(f"adapter '{Path(folder).name}' is missing {name}, which its metadata lists")
        if actual[name] != expected:
            raise AdapterError(
                f"checksum mismatch for {name} of adapter '{Path(folder).name}': the file changed after training "
                f"(expected sha256 {expected[:12]}..., found {actual[name][:12]}...)"
            )
    unlisted = sorted(set(actual) - set(metadata.checksums) - {CONFIG_FILE})
    if unlisted:
        raise AdapterError(f"adapter '{Path(folder).name}' holds weight files its metadata does not list: {unlisted}")


def check_base(adapter: str, trained_on: str, recorded: AdapterMetadata | None, loaded_name: str,
               loaded_weights: tuple[str, list[float]]) -> None:
    """The adapter's base is the loaded model: the same name and, where the adapter's metadata records
    them, the same weights: the fingerprint, or where only the rounding of another dtype (fp16) changed
    it, the recorded sample (`metadata.same_weights`). `loaded_weights`: `metadata.base_weights` of the model."""
    from adapters.metadata import same_weights
    from bot.models import local_spec

    if trained_on != loaded_name and local_spec(trained_on) != loaded_name:  # recorded as typed before 2026-11-28
        raise AdapterError(
            f"adapter '{adapter}' was trained on base model '{trained_on}', but the loaded model is '{loaded_name}'"
        )
    fingerprint, sample = loaded_weights
    if recorded is not None and recorded.base_fingerprint != fingerprint and not same_weights(recorded.base_sample,
                                                                                            sample):
        raise AdapterError(
            f"adapter '{adapter}' was trained on other weights of '{trained_on}' "
            f"(fingerprint {recorded.base_fingerprint}, the loaded model's is {fingerprint})"
        )


def read_config(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / CONFIG_FILE).read_text())
    except json.JSONDecodeError as error:
        raise AdapterError(f"{Path(folder) / CONFIG_FILE} is not valid JSON: {error}") from error


def weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes by key, read from the safetensors header without loading tensors."""
    if weights.suffix != ".safetensors":
        import torch

        return {key: tuple(value.shape) for key, value in torch.load(weights, weights_only=True).items()}
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def check_shapes(adapter: str, config: dict, shapes: dict[str, tuple[int, ...]], base_model) -> None:
    """Every LoRA pair names a linear or embedding layer of `base_model` (unwrapped), with shapes (r, in)
    and (out, r). Other keys (PEFT saves the base weights of an adapted head or embedding) are not pairs."""
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"adapter '{adapter}' is a {config.get('peft_type')} adapter; only LoRA is supported")
    modules = dict(base_model.named_modules())
    for key, shape in shapes.items():
        path, marker, part = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        if not marker:
            continue
        if path not in modules:
            raise AdapterError(f"adapter '{adapter}' targets module '{path}', which the base model does not have")
        _check_pair(adapter, path, part, shape, _dimensions(adapter, path, modules[path]), config)


def _dimensions(adapter: str, path: str, module) -> tuple[int, int]:
    """The (in, out) sizes of the layer a LoRA pair adapts: a linear layer, or an embedding (ids in, vectors out)."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(module, BaseTunerLayer):
        module = module.get_base_layer()
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    raise AdapterError(f"adapter '{adapter}' targets '{path}', a {type(module).__name__}; only linear and embedding "
                       "layers are supported")


def _check_pair(adapter: str, path: str, part: str, shape: tuple[int, ...], dimensions: tuple[int, int],
                config: dict) -> None:
    """`part`: what follows ".lora_" in the key, "A.weight" and "B.weight" for a linear layer,
    "embedding_A" and "embedding_B" for an embedding (other parts, e.g. DoRA's magnitudes, are not checked)."""
    side = part.removeprefix("embedding_")[:1] if part.startswith(("A.", "B.", "embedding_A", "embedding_B")) else None
    if side is None:
        return
    rank = shape[0] if side == "A" else shape[-1]
    expected = (rank, dimensions[0]) if side == "A" else (dimensions[1], rank)
    if shape != expected:
        raise AdapterError(
            f"adapter '{adapter}': lora_{part} of '{path}' has shape {list(shape)}, the base layer needs {list(expected)}"
        )
    if not config.get("rank_pattern") and rank != config.get("r"):
        raise AdapterError(f"adapter '{adapter}': '{path}' has rank {rank}, but adapter_config.json says r={config.get('r')}")

