"""The metadata file written beside every trained adapter, and the hashes it records.

An adapter folder holds the standard PEFT files (`adapter_config.json`, `adapter_model.safetensors`)
and `adapter_metadata.json`: which base it was trained on (id and a fingerprint of its weights),
the prompt template, the training data's hash and size, the run's metrics, and a sha256 of every
weight file so that the registry can refuse a folder whose weights were changed afterwards.

This module only reads, writes and hashes; it loads no model and decides nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

METADATA_FILE = "adapter_metadata.json"
CONFIG_FILE = "adapter_config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
FORMAT_VERSION = 1


class MetadataError(ValueError):
    """An adapter's metadata file is missing, unreadable or incomplete."""


@dataclass
class AdapterMetadata:
    base_model: str
    """Canonical id of the base model (`LoadedModel.name`), e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`."""
    base_fingerprint: str
    """`weights_fingerprint` of the base model the adapter was trained on."""
    checksums: dict[str, str]
    """sha256 of each weight file and of adapter_config.json, by file name (adapters trained before
    2026-11-28 list the weight files only, and their config goes unchecked)."""
    chat_template: str | None = None
    """The tokenizer's chat template used to render the training examples."""
    data_file: str = ""
    """Path of the training data as given."""
    data_sha256: str = ""
    """sha256 of the training data file's bytes."""
    examples: int = 0
    """Training examples after the eval split that kept an answer within max_length (before packing)."""
    eval_examples: int = 0
    """Examples held out for the eval loss."""
    steps: int = 0
    """Optimizer steps taken."""
    final_loss: float | None = None
    """Mean training loss of the last logged step."""
    eval_loss: float | None = None
    """Mean loss on the held-out examples after training; None without an eval split."""
    seconds: float = 0.0
    """Wall time of the training run (s)."""
    config: dict = field(default_factory=dict)
    """The training options, as `TrainConfig` fields."""
    engine: str = ""
    """How the run was distributed, e.g. `one process`, `DDP x2`, `FSDP2 x8`, `DeepSpeed ZeRO-3 x4`."""
    speedups: list[str] = field(default_factory=list)
    """What the run used to train faster without changing the result: `chunked loss`, `compiled blocks`."""
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if not self.base_model:
            raise MetadataError("base_model must name the base model, got an empty string")
        if not self.checksums:
            raise MetadataError("checksums must list at least one weight file")
        if self.steps < 0 or self.examples < 0:
            raise MetadataError(f"steps and examples must be non-negative, got {self.steps} and {self.examples}")

    def write(self, folder: Path) -> Path:
        path = Path(folder) / METADATA_FILE
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> "AdapterMetadata":
        path = Path(folder) / METADATA_FILE
        if not path.is_file():
            raise MetadataError(f"adapter folder '{folder}' has no {METADATA_FILE}")
        try:
            raw = json.loads(path.read_text())
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as error:
            raise MetadataError(f"{path} is not valid adapter metadata: {error}") from error


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """The weight files of an adapter folder (safetensors or pickle), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.name.endswith(WEIGHT_SUFFIXES))


def file_checksums(folder: Path) -> dict[str, str]:
    """sha256 by file name of the weight files and of adapter_config.json: its scaling (`lora_alpha`)
    and targets change what the weights do as much as the weights themselves."""
    files = [*weight_files(folder), Path(folder) / CONFIG_FILE]
    return {path.name: file_sha256(path) for path in files if path.is_file()}


def fingerprint_is_collective(model) -> bool:
    """Whether `weights_fingerprint` must run on every process: the embeddings are partitioned by
    DeepSpeed ZeRO-3, and gathering them is a collective."""
    return hasattr(model.get_input_embeddings().weight, "ds_shape")


def weights_fingerprint(model) -> str:
    """A short hash that tells base models apart, the same whatever dtype the model was loaded in.

    It covers the input embedding matrix (rounded to bf16, so fp32 and bf16 loads agree) and the
    model's depth. The embeddings are never quantized, so a QLoRA run fingerprints its base like a
    full-precision load does; hashing one matrix keeps it well under a second for small models.
    Under DeepSpeed ZeRO-3 each process holds a slice of the matrix; gathering it is a collective,
    so there every process calls this.
    """
    import contextlib

    import torch

    weight = model.get_input_embeddings().weight
    whole = contextlib.nullcontext()
    if fingerprint_is_collective(model):
        import deepspeed

        whole = deepspeed.zero.GatheredParameters([weight])
    with whole:
        embeddings = weight.detach()
        digest = hashlib.sha256(repr((tuple(embeddings.shape), model.config.num_hidden_layers)).encode())
        as_bf16 = embeddings.to("cpu", torch.bfloat16).contiguous().view(torch.int16)
        digest.update(as_bf16.numpy().tobytes())
    return digest.hexdigest()[:16]

