"""Options of a LoRA training run, validated once for the CLI and for in-process callers alike.

`TrainConfig` is what `adapters.train.train(config)` takes; the command line builds one from its
flags, so both report the same errors. This module does not train.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

ALL_LINEAR = "all-linear"
PRECISIONS = ("auto", "bf16", "fp32")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""Adapter names: they become folder names and keys inside PEFT's module dicts (which refuse dots)."""
RESERVED = ("base", "__base__")
"""Names the generator gives special meaning (no adapter)."""


def check_adapter_name(name: str, what: str = "adapter name") -> None:
    """Raise ValueError unless `name` can name an adapter: a plain name, not a path, not reserved."""
    if name in RESERVED:
        raise ValueError(f"{what} '{name}' is reserved: it means the base model without an adapter")
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"{what} '{name}' is not a valid adapter name: use letters, digits, '-' and '_' "
            "(at most 64, starting with a letter or digit; no paths)"
        )


@dataclass
class TrainConfig:
    data: str
    """Training data: .jsonl or .json with input/output, alpaca, `messages` or ShareGPT records, or a .csv/.tsv
    table with input and output columns."""
    output: str
    """Adapter folder to write; its name is the adapter's name. Replaced only once the new one is complete."""
    model: str = "default"
    """Base model: `default`, a model folder, a .gguf file or a hub id (as `bot.models.load_model` takes it)."""
    fill: dict[str, str] = field(default_factory=dict)
    """Values for `{{key}}` placeholders in the data."""
    rank: int = 16
    """LoRA rank r."""
    alpha: float = 32.0
    """LoRA scaling numerator: updates are scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the LoRA input during training. Off by default, as in peft: on a CPU, drawing the random
    masks made training 1.4x slower, and 0.05 moved the eval loss by at most 3%, either way (BENCHMARKS.md)."""
    target_modules: list[str] | str = ALL_LINEAR
    """Module names to adapt (e.g. ["q_proj", "v_proj"]), or "all-linear" (every linear layer but the output head)."""
    learning_rate: float = 2e-4
    """Peak learning rate of AdamW (LoRA takes larger ones than full fine-tuning)."""
    epochs: float = 1.0
    """Passes over the data; ignored when max_steps is set."""
    max_steps: int | None = None
    """Optimizer steps to take; overrides epochs."""
    batch_size: int = 4
    """Examples per micro-batch, per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_length: int = 512
    """Tokens per example (or per packed sequence); longer ones are cut."""
    packing: bool = False
    """Concatenate short examples into sequences of max_length tokens."""
    warmup_ratio: float = 0.05
    """Fraction of the steps spent warming the learning rate up linearly (then it decays linearly to 0)."""
    seed: int = 0
    """Seeds the LoRA initialisation, the eval split and the order of the examples."""
    eval_fraction: float = 0.0
    """Fraction of the examples held out to report an eval loss (0 = no eval split)."""
    save_every: int = 0
    """Write a resumable checkpoint every this many steps (0 = never)."""
    resume: bool = False
    """Continue from the newest checkpoint of a previous run with the same output."""
    restart: bool = False
    """Discard an interrupted run's checkpoints and start from step 0 (without it, or --resume, a run that
    finds them stops and says so)."""
    precision: str = "auto"
    """"auto" (bf16 autocast on a GPU that has it, and on a CPU with AMX or AVX-512 BF16; else fp32),
    "bf16" or "fp32". The adapter's own weights stay fp32; on a GPU, bf16 also loads the frozen base in bf16."""
    qlora: bool = False
    """Load the base in 4-bit NF4 (bitsandbytes); needs a CUDA GPU."""
    gradient_checkpointing: bool = False
    """Keep only each block's input and recompute the rest in the backward pass: activation memory
    falls from every layer's to about one layer's, for about a third more compute."""
    chunked_loss: bool | None = None
    """Compute the loss from the final hidden states 1024 tokens at a time, never holding the whole
    (batch, seq, vocab) logits: the same loss and gradients in less memory. None: wherever it can
    run (not under FSDP or DeepSpeed, nor for a model that transforms its logits after the head)."""
    compile: bool | None = None
    """Compile each decoder block with torch.compile: faster steps after tens of seconds of
    compiling. None: on a CUDA GPU, for runs that repay it (base parameters x tokens trained at
    least 2e15, e.g. 160 steps of 8,192 tokens on a 1.5B model)."""
    log_every: int = 1
    """Log the loss every this many steps."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        self._check_positive_ints("rank", "batch_size", "grad_accum", "max_length", "log_every")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate < 1):
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.eval_fraction <= 0.5:
            raise ValueError(f"eval_fraction must be between 0 and 0.5, got {self.eval_fraction}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be a whole number from 0 to {2**32 - 1}, got {self.seed!r}")
        if self.resume and self.restart:
            raise ValueError("resume and restart exclude each other: continue the interrupted run or discard it")
        if self.save_every < 0:
            raise ValueError(f"save_every must be 0 (never) or positive, got {self.save_every}")
        if isinstance(self.target_modules, str) and self.target_modules != ALL_LINEAR:
            raise ValueError(f"target_modules must be a list of module names or '{ALL_LINEAR}', got {self.target_modules!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        if not self.output.strip():
            raise ValueError("output must name the adapter folder to write")
        check_adapter_name(self.output.rstrip("/").rsplit("/", 1)[-1], what="output folder name")

    def _check_positive_ints(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")

    def as_dict(self) -> dict:
        return asdict(self)
