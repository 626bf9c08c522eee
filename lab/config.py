"""The options of one lab run, checked once for the CLI and the UI alike.

`LabConfig` holds every experiment's options; each experiment reads the ones it needs (listed in
`lab.runner.EXPERIMENTS`). This module does not load models or data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bot.backend import BACKENDS
from lab.errors import LabError
from lab.prompt import STYLES

TASKS = ("auto", "classify", "generate")
DTYPES = ("float32", "bfloat16", "auto")


@dataclass
class LabConfig:
    train: str
    """Labelled pool the demonstrations come from (JSONL of {"input", "output"})."""
    test: str
    """Labelled test items (same format); the label set is the set of their outputs."""
    model: str = "default"
    """Model spec: 'default', a local folder, a .gguf file or a hub id (with the openai backend: the model
    the server runs, for its tokenizer)."""
    adapter: str | None = None
    """A LoRA adapter applied to the model for every prompt: a folder, a name in the adapters folder or a
    hub id, as `python -m bot ask --adapter` takes it (with the openai backend: a model name on the server)."""
    dtype: str = "float32"
    """Model weights' dtype; float32 keeps scores reproducible across batch shapes."""
    k: int = 4
    """Demonstrations per prompt (order, labels, select, finetune)."""
    ks: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    """Shot counts compared by the shots experiment."""
    n_test: int = 100
    """Test items used (a fixed random sample of the test file; all when it has fewer)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One demonstration set (or random draw) per seed."""
    permutations: int = 24
    """Orders tried per demonstration set: all of them when k! is at most this, else a sample."""
    probe_size: int = 16
    """Probe inputs the model generates for GlobalE/LocalE order selection (Lu et al. 2022)."""
    style: str = "plain"
    """Prompt style: `plain` (Input:/Label: blocks) or `chat` (the chat template)."""
    calibrate: bool = False
    """Contextual calibration with content-free inputs (Zhao et al. 2021)."""
    task: str = "auto"
    """`classify` (score each label), `generate` (greedy answer, exact match) or `auto` (classify when the
    test set has at most 20 distinct outputs)."""
    embedder: str = "default"
    """Embedder spec for kNN and MMR selection (`hash` for a model-free lexical one)."""
    diversity: float = 0.5
    """MMR's trade-off: 0 is kNN, 1 ignores the query after the first pick."""
    batch_size: int = 32
    """Rows per forward pass."""
    max_new_tokens: int = 16
    """Answer length for generation tasks."""
    train_steps: int = 200
    """LoRA optimizer steps for the finetune experiment (per adapter, whatever its training set's size)."""
    train_sizes: list[int] = field(default_factory=list)
    """Training-set sizes the finetune experiment sweeps: for each N, an adapter is trained on N rows of
    the pool and prompting picks its demonstrations from the same N rows (nested random samples, drawn
    with the first seed). Empty: the whole pool, once."""
    ood: str | None = None
    """A pool from another task or corpus whose inputs (not outputs) the labels experiment shows in its
    `ood` condition: out-of-distribution inputs with the random condition's labels (Min et al. 2022)."""
    out: str | None = None
    """Result folder; a new one under runs/ when not given."""
    backend: str = "local"
    """`local` runs `model` here; `openai` scores and generates on `base_url` (`lab.remote`), with
    `model` only for its tokenizer and `adapter` naming a model on that server."""
    base_url: str | None = None
    """An OpenAI-compatible server (`.../v1`) for the openai backend."""
    api_key: str | None = field(default=None, repr=False)
    """Bearer key for `base_url` (default: $OPENAI_API_KEY); never written to result files."""
    remote_model: str | None = None
    """The base model to ask on `base_url` where it serves several (default: its only one); `adapter`,
    when given, names the model asked instead."""

    def __post_init__(self):
        self.ks = sorted(set(self.ks))
        self.seeds = list(dict.fromkeys(self.seeds))  # a seed listed twice would count its run twice
        self.train_sizes = sorted(set(self.train_sizes))
        _at_least("k", self.k, 0)
        _at_least("n_test", self.n_test, 1)
        _at_least("permutations", self.permutations, 1)
        _at_least("probe_size", self.probe_size, 2)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("max_new_tokens", self.max_new_tokens, 1)
        _at_least("train_steps", self.train_steps, 1)
        if not self.ks or min(self.ks) < 0:
            raise LabError(f"ks must be shot counts >= 0, got {self.ks}", option="ks")
        if not self.seeds:
            raise LabError("seeds must name at least one seed", option="seeds")
        for seed in self.seeds:
            _at_least("seeds", seed, 0)
        for size in self.train_sizes:
            _at_least("train_sizes", size, 1)
        _one_of("style", self.style, STYLES)
        _one_of("task", self.task, TASKS)
        _one_of("dtype", self.dtype, DTYPES)
        _one_of("backend", self.backend, BACKENDS)
        if self.backend == "openai" and not self.base_url:
            raise LabError("the openai backend needs base_url (--base-url)")
        if not 0.0 <= self.diversity <= 1.0:
            raise LabError(f"diversity must be between 0 and 1, got {self.diversity}", option="diversity")

    def to_dict(self) -> dict:
        """The config as result.json records it (without the API key)."""
        fields = asdict(self)
        fields.pop("api_key")
        return fields


def _at_least(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise LabError(f"{name} must be a whole number >= {low}, got {value!r}", option=name)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise LabError(f"unknown {name} '{value}'; choose one of: {', '.join(allowed)}", option=name)
