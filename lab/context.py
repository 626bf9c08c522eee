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


def max_k(config: LabConfig, experiment: str) -> int:
    return max(config.ks) if experiment == "shots" else config.k


def open_context(config: LabConfig, experiment: str, out: Path, progress: Progress = no_progress,
                 loaded=None) -> LabContext:
    """Load data (checked), then the model (unless `loaded` is given) and its adapter."""
    data = load_data(config.train, config.test, config.n_test, config.task)
    check_fits(data, max_k(config, experiment))
    options = dict(calibrated=config.calibrate, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens)
    if config.backend == "openai":
        loaded, remote = open_remote(config)
        options.update(scorer=remote.score, generator=remote.generate)
    elif loaded is None:
        from bot.models import load_model

        progress(0.0, f"loading model {config.model}")
        loaded = load_model(config.model, dtype=config.dtype)
    if config.adapter and config.backend == "local":
        loaded = with_adapter(loaded, config.adapter)
    predictor = Predictor(loaded.model, loaded.tokenizer, PromptFormat(config.style), data.labels, data.task, **options)
    chooser = DemoChooser(data.train, config.embedder, config.diversity)
    return LabContext(config, loaded, data, predictor, chooser, progress, out)


@dataclass
class RemoteLoaded:
    """Stands in for a LoadedModel when the model runs on a server: a name and a local tokenizer."""

    name: str
    tokenizer: object
    dtype: str = "remote"
    model: None = None


def open_remote(config: LabConfig):
    """(RemoteLoaded, RemoteModel) for the openai backend; `config.adapter` names a model on the server."""
    import os

    from bot.models import ModelError, load_tokenizer
    from lab.errors import LabError
    from lab.remote import RemoteModel

    try:
        tokenizer = load_tokenizer(config.model)
    except (ModelError, OSError) as error:
        raise LabError(f"the openai backend scores with a local copy of the model's tokenizer: {error}") from error
    remote = RemoteModel(config.base_url, tokenizer, model=config.adapter,
                         api_key=config.api_key or os.environ.get("OPENAI_API_KEY"), batch_size=config.batch_size)
    return RemoteLoaded(name=remote.name, tokenizer=tokenizer), remote


def with_adapter(loaded, adapter: str | Path):
    """A copy of `loaded` whose model runs the LoRA adapter in folder `adapter`.

    The model is copied first: PEFT injects its layers in place, and `loaded` may be the one the
    chat service is serving.
    """
    import copy

    from peft import PeftModel

    from lab.errors import LabError

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise LabError(f"--adapter {adapter}: not a LoRA adapter folder (no adapter_config.json)")
    model = PeftModel.from_pretrained(copy.deepcopy(loaded.model), str(adapter)).eval()
    return replace(loaded, model=model, name=f"{loaded.name}+{Path(adapter).name}")
