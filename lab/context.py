"""Everything an experiment needs, loaded once per run: model, data, predictor, demo chooser.

`open_context` checks the config against the data before any model is loaded, so a bad pool or
k fails in a second. `evaluate` scores the test items with given demonstrations. Experiments
decide which demonstrations; this module only runs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lab.config import LabConfig
from lab.data import LabData, check_fits, load_data
from lab.demos import DemoChooser
from lab.errors import LabError
from lab.predict import Case, Predictor
from lab.prompt import Demo, PromptFormat
from lab.stats import accuracy

Progress = Callable[[float, str], None]
"""Called with (fraction done in [0, 1], what is running)."""


def no_progress(fraction: float, message: str) -> None:
    """The default progress callback: report nothing."""


@dataclass
class LabContext:
    config: LabConfig
    loaded: object
    """A `bot.models.LoadedModel` with the config's adapter applied, or a `RemoteLoaded` (openai backend)."""
    data: LabData
    predictor: Predictor
    chooser: DemoChooser
    progress: Progress
    out: Path
    """The run's result folder (experiments may write artefacts there, e.g. an adapter)."""

    def evaluate(self, demos: Sequence[tuple[Demo, ...]] | tuple[Demo, ...]) -> dict:
        """Accuracy on the test items with one demonstration set for all, or one per item."""
        per_item = demos if isinstance(demos, list) else [demos] * len(self.data.test)
        cases = [Case(d, item.input, item.output) for d, item in zip(per_item, self.data.test)]
        start = time.perf_counter()
        predictions = self.predictor.predict(cases)
        return {
            "accuracy": accuracy(predictions, [case.gold for case in cases]),
            "seconds": time.perf_counter() - start,
            "predictions": predictions,
        }


EMBEDDING_EXPERIMENTS = ("shots", "select", "finetune")
"""The experiments that choose demonstrations by similarity, and so need the embedder."""
DEMONSTRATION_EXPERIMENTS = ("order", "labels", "select", "finetune")
"""The experiments whose every condition but a zero-shot floor shows `k` demonstrations."""


def max_k(config: LabConfig, experiment: str) -> int:
    return max(config.ks) if experiment == "shots" else config.k


def check_config(config: LabConfig, experiment: str, out: Path) -> None:
    """What can be refused from the config alone, before data or models load."""
    from adapters.publish import creation_problem

    if out.exists() and not out.is_dir():
        raise LabError(f"--out {out} is a file; give a folder for the run's results")
    if out.is_dir() and any(out.iterdir()):
        raise LabError(f"--out {out} already holds files (an earlier run's, or others'); give a new folder, "
                       "so that nothing there is overwritten")
    problem = creation_problem(out)
    if problem:
        raise LabError(f"--out: {problem}")
    if experiment in DEMONSTRATION_EXPERIMENTS and config.k < 1:
        raise LabError(f"the {experiment} experiment needs k >= 1 demonstrations (k), got k={config.k}")
    if config.ood and experiment != "labels":
        raise LabError(f"--ood is read by the labels experiment only; drop it for {experiment}")
    if config.ood and Path(config.ood).resolve() in (Path(config.train).resolve(), Path(config.test).resolve()):
        raise LabError("the out-of-distribution pool (--ood) is the train or test file; give a pool from another "
                       "task or corpus, whose inputs are out of this task's distribution")
    if config.train_sizes and experiment != "finetune":
        raise LabError(f"--train-sizes is read by the finetune experiment only; drop it for {experiment}")
    if config.train_sizes and config.train_sizes[0] < config.k:
        raise LabError(f"train size {config.train_sizes[0]} is smaller than k={config.k}: prompting could not "
                       "pick k demonstrations from it")
    if experiment == "finetune" and config.adapter:
        raise LabError("the finetune experiment trains its adapter on the bare base model; "
                       "drop --adapter (it would only stack the new adapter on top of yours when scoring)")


def open_context(config: LabConfig, experiment: str, out: Path, progress: Progress = no_progress,
                 loaded=None) -> LabContext:
    """Load data (checked) and find the adapter, then load the model (unless `loaded` is given) and apply it."""
    check_config(config, experiment, out)
    data = load_data(config.train, config.test, config.n_test, config.task, ood=config.ood)
    check_fits(data, max_k(config, experiment))
    if config.train_sizes and config.train_sizes[-1] > len(data.train):
        raise LabError(f"train size {config.train_sizes[-1]} is larger than the training pool ({len(data.train)} "
                       f"examples in {data.train.source})")
    chooser = DemoChooser(data.train, config.embedder, config.diversity)
    if experiment in EMBEDDING_EXPERIMENTS:
        chooser.embedder()  # a bad --embedder fails here, not after the model and the first conditions
    options = dict(calibrated=config.calibrate, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens)
    adapter = find_adapter(config.adapter) if config.adapter and config.backend == "local" else None
    if config.backend == "openai":
        loaded, remote = open_remote(config)
        options.update(scorer=remote.score, generator=remote.generate)
    elif loaded is None:
        from bot.models import ModelError, load_model

        progress(0.0, f"loading model {config.model}")
        try:
            loaded = load_model(config.model, dtype=config.dtype)
        except ModelError as error:  # the message says what was tried, as `python -m bot ask` shows it
            raise LabError(str(error)) from error
    if adapter is not None:
        loaded = with_adapter(loaded, adapter)
    predictor = Predictor(loaded.model, loaded.tokenizer, PromptFormat(config.style), data.labels, data.task,
                          window=loaded.context_window, **options)
    return LabContext(config, loaded, data, predictor, chooser, progress, out)


@dataclass
class RemoteLoaded:
    """Stands in for a LoadedModel when the model runs on a server: a name and a local tokenizer."""

    name: str
    tokenizer: object
    dtype: str = "remote"
    weights: str = ""
    model: None = None
    context_window: int | None = None
    """The tokenizer's limit where it states one; the server refuses longer prompts in any case."""


def open_remote(config: LabConfig):
    """(RemoteLoaded, RemoteModel) for the openai backend; `config.adapter` names a model on the server."""
    import os

    from bot.models import ModelError, load_tokenizer
    from lab.remote import RemoteModel

    try:
        tokenizer = load_tokenizer(config.model)
    except (ModelError, OSError) as error:
        raise LabError(f"the openai backend scores with a local copy of the model's tokenizer: {error}") from error
    remote = RemoteModel(config.base_url, tokenizer, model=config.adapter or config.remote_model,
                         api_key=config.api_key or os.environ.get("OPENAI_API_KEY"), batch_size=config.batch_size)
    limit = getattr(tokenizer, "model_max_length", None)  # tokenizers that state none report ~1e30
    window = int(limit) if limit and limit < 10**7 else None
    return RemoteLoaded(name=remote.name, tokenizer=tokenizer, context_window=window), remote


def find_adapter(spec: str):
    """`--adapter` as `python -m bot ask` reads it (`resolve_cli_adapter`): an AdapterInfo, vetted
    once the model is loaded."""
    from adapters.checks import AdapterError
    from adapters.host import resolve_cli_adapter

    try:
        return resolve_cli_adapter(spec)
    except AdapterError as error:
        raise LabError(f"--adapter {spec}: {error}") from error


def with_adapter(loaded, adapter):
    """A copy of `loaded` whose model runs a LoRA adapter: a folder path, or an AdapterInfo from
    `find_adapter`, which is vetted against the model first (trained on this base, shapes that fit).

    The model is copied first: PEFT injects its layers in place, and `loaded` may be the one the
    chat service is serving.
    """
    import copy

    from peft import PeftModel

    from adapters.checks import AdapterError
    from adapters.metadata import base_weights
    from adapters.registry import AdapterInfo, AdapterRegistry

    if isinstance(adapter, AdapterInfo):
        try:
            AdapterRegistry().vet(adapter, loaded, base_weights(loaded.model))
        except AdapterError as error:
            raise LabError(f"--adapter {adapter.name}: {error}") from error
        folder, name = adapter.path, adapter.name
    else:
        folder, name = Path(adapter), Path(adapter).name
        if not (folder / "adapter_config.json").is_file():
            raise LabError(f"--adapter {adapter}: not a LoRA adapter folder (no adapter_config.json)")
    model = PeftModel.from_pretrained(copy.deepcopy(loaded.model), str(folder)).eval()
    return replace(loaded, model=model, name=f"{loaded.name}+{name}")
