"""The metadata file written beside every trained adapter, and the hashes it records.

An adapter folder holds the standard PEFT files (`adapter_config.json`, `adapter_model.safetensors`)
and `adapter_metadata.json`: which base it was trained on (id, a fingerprint and a sample of its
weights), the prompt template, the training data's hash and size, the run's metrics, and a sha256
of every weight file and of the PEFT config, so that the registry can refuse a folder changed afterwards.

This module only reads, writes and hashes; it loads no model and decides nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
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
    base_sample: list[float] = field(default_factory=list)
    """`weights_sample` of the base: matched with a tolerance where the fingerprint differs only by
    the rounding of another dtype (empty in adapters recorded before 2026-11-28)."""
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


@contextlib.contextmanager
def _embeddings(model):
    """The input embedding matrix, detached and whole. Under DeepSpeed ZeRO-3 each process holds a
    slice of it; gathering it is a collective, so there every process must enter this."""
    weight = model.get_input_embeddings().weight
    whole = contextlib.nullcontext()
    if fingerprint_is_collective(model):
        import deepspeed

        whole = deepspeed.zero.GatheredParameters([weight])
    with whole:
        yield weight.detach()


def weights_fingerprint(model) -> str:
    """A short hash that tells base models apart, the same for fp32 and bf16 loads of one model.

    It covers the input embedding matrix (rounded to bf16, so fp32 and bf16 loads agree) and the
    model's depth. The embeddings are never quantized, so a QLoRA run fingerprints its base like a
    full-precision load does; hashing one matrix keeps it well under a second for small models.
    An fp16 load rounds differently (fp32 to fp16 to bf16 is not fp32 to bf16, and fp16 loses tiny
    values): `weights_sample` and `same_weights` match it.
    """
    import torch

    with _embeddings(model) as embeddings:
        digest = hashlib.sha256(repr((tuple(embeddings.shape), model.config.num_hidden_layers)).encode())
        as_bf16 = embeddings.to("cpu", torch.bfloat16).contiguous().view(torch.int16)
        digest.update(as_bf16.numpy().tobytes())
    return digest.hexdigest()[:16]


SAMPLE_SIZE = 256
"""Embedding values in `weights_sample`."""


def weights_sample(model) -> list[float]:
    """SAMPLE_SIZE values of the input embeddings at evenly spaced positions, to 6 significant digits."""
    import torch

    with _embeddings(model) as embeddings:
        flat = embeddings.reshape(-1)
        positions = torch.arange(SAMPLE_SIZE, device=flat.device) * (flat.numel() - 1) // (SAMPLE_SIZE - 1)
        return [float(f"{value:.6g}") for value in flat[positions].float().tolist()]


def base_weights(model) -> tuple[str, list[float]]:
    """What `checks.check_base` compares with an adapter's record: the loaded base's `weights_fingerprint`,
    and for an fp16 load, whose fingerprint alone cannot match, its `weights_sample` (empty otherwise:
    an fp32 or bf16 load matches the fingerprint exactly or not at all)."""
    import torch

    fp16 = model.get_input_embeddings().weight.dtype == torch.float16
    return weights_fingerprint(model), weights_sample(model) if fp16 else []


def same_weights(recorded: list[float], loaded: list[float]) -> bool:
    """Whether two samples are of one model's weights loaded in different dtypes: every value within
    1% (bf16 rounds by at most 0.4%), or, for values near 0 that fp16 flushes, 0.1% of the sample's
    typical size. Weights of another model differ by about their own size."""
    if not recorded or len(recorded) != len(loaded):
        return False
    scale = math.sqrt(sum(value * value for value in recorded) / len(recorded))
    return all(abs(a - b) <= 1e-2 * abs(a) + 1e-3 * scale for a, b in zip(recorded, loaded))

