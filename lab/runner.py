"""Run a named experiment into a result folder, and list earlier runs.

    path = run_experiment("order", LabConfig(train=..., test=...), progress=callback)

writes `result.json` (config, model, timing and every raw number), `report.md` (a table) and
`plot.png` into `config.out` (default: a new `runs/<experiment>-<time>` folder) and returns the
folder. It blocks; the UI runs it in a background thread and passes a progress callback.
`list_runs(folder)` reads the `result.json` files below a folder, newest first.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

from lab.config import LabConfig
from lab.context import Progress, no_progress, open_context
from lab.errors import LabError
from lab.uncertainty import section

EXPERIMENTS = {
    "shots": "accuracy for k in ks, random vs kNN selection, over seeds (ks, seeds, embedder)",
    "order": "accuracy of every order of k demonstrations per seed, plus GlobalE/LocalE (k, permutations, probe_size)",
    "labels": "gold vs random demonstration labels vs none, and out-of-distribution inputs (k, seeds, ood)",
    "select": "kNN vs MMR vs random at the same k (k, seeds, embedder, diversity)",
    "finetune": "kNN prompting vs a LoRA adapter trained on the pool vs both (k, train_steps, embedder; "
                "train_sizes sweeps sizes, sampled with the first seed)",
}
"""Experiment names and the config fields each reads besides the common ones."""
DEFAULT_RUNS = Path("runs")


def experiment_module(name: str):
    if name not in EXPERIMENTS:
        raise LabError(f"unknown experiment '{name}'; available: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"lab.experiments.{name}")


def run_experiment(name: str, config: LabConfig, progress: Progress = no_progress, loaded=None,
                   runs: Path = DEFAULT_RUNS) -> Path:
    """Run experiment `name`; returns the folder holding result.json, report.md and plot.png.

    The folder is `config.out`, which must be new or empty, or else a new `<name>-<time>` folder in
    `runs`. `loaded` is an already loaded `bot.models.LoadedModel` to use instead of loading `config.model`.
    """
    module = experiment_module(name)
    started = time.perf_counter()
    out = Path(config.out) if config.out else new_run_folder(Path(runs), name)
    ours = not (config.out and out.exists())  # an empty folder the user gave stays, whatever happens
    try:
        ctx = open_context(config, name, out, progress, loaded)
        make_folder(out, exist_ok=True)
        result = module.run(ctx)
        result["uncertainty"] = module.uncertainty(result, [item.output for item in ctx.data.test])
        record = {
            "experiment": name,
            "created": datetime.now().isoformat(timespec="seconds"),
            "config": config.to_dict(),
            "model": ctx.loaded.name,
            "weights": ctx.loaded.weights,
            "dtype": ctx.loaded.dtype,
            "task": ctx.data.task,
            "labels": ctx.data.labels,
            "n_test": len(ctx.data.test),
            "test": [{"input": item.input, "output": item.output} for item in ctx.data.test],  # what predictions index
            "test_label_counts": ctx.data.label_counts(),
            "majority": ctx.data.majority() if ctx.data.task == "classify" else None,
            "train_only_labels": ctx.data.train_only_labels(),
            "train_size": len(ctx.data.train),
            "train_held_out": ctx.data.held_out,
            "ood_size": len(ctx.data.ood) if ctx.data.ood is not None else None,
            "train_duplicates": ctx.data.train.duplicates,
            "train_sha256": ctx.data.train.sha256,
            "seconds": time.perf_counter() - started,
            **result,
        }
        try:
            (out / "result.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
            (out / "report.md").write_text(render_report(record, module.table(result) + "\n\n"
                                                         + section(result["uncertainty"])))
            module.plot(result, out / "plot.png")
        except OSError as error:  # a full disk, say: one line, as for any other refusal
            raise LabError(f"cannot write the run's results into {out}: {error.strerror or error}") from error
    except BaseException:
        if ours:
            _remove_if_empty(out)  # a run refused or failed before it wrote anything leaves no folder
        raise
    progress(1.0, f"done: {out}")
    return out


def new_run_folder(runs: Path, name: str) -> Path:
    """A folder name in `runs` for a run of `name` started now that no other run has taken
    (two runs in the same second get `-2`, `-3`, ...); the folder is made when the run starts."""
    stem = f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    for suffix in ["", *(f"-{n}" for n in range(2, 1000))]:
        folder = runs / f"{stem}{suffix}"
        try:
            make_folder(folder, exist_ok=False)
        except FileExistsError:
            continue
        return folder
    raise LabError(f"{runs} already holds a thousand runs named {stem}-*")


def make_folder(folder: Path, exist_ok: bool) -> None:
    """mkdir with parents; a file-system error other than the folder existing becomes a LabError."""
    try:
        folder.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        raise
    except OSError as error:
        raise LabError(f"cannot create the result folder {folder}: {error.strerror or error}") from error


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only ever removes an empty folder
    except OSError:
        pass


PLOT_LINK = "\n\n![plot](plot.png)\n"
"""How report.md ends: the plot beside it. A page that shows the report shows the plot itself."""
SPLIT_NAMES = {"train", "test", "dev", "validation", "pool", "data"}


def render_report(record: dict, table: str) -> str:
    config = record["config"]
    shots = f"ks={config['ks']}" if record["experiment"] == "shots" else f"k={config['k']}"  # shots sweeps ks
    seeds = f", seeds={config['seeds']}"
    if record["experiment"] == "finetune":  # it draws no demonstration sets; a sweep draws its samples
        sizes = config.get("train_sizes")
        seeds = f", train_sizes={sizes} (sampled with seed {config['seeds'][0]}), train_steps={config['train_steps']}" \
            if sizes else f", train_steps={config['train_steps']}"
    train, test = shown_path(config["train"]), shown_path(config["test"])
    duplicates = record.get("train_duplicates", 0)  # runs from before 2026-11-27 do not record it
    dropped = f"; {duplicates} exact {'duplicate' if duplicates == 1 else 'duplicates'} dropped" if duplicates else ""
    held_out = record.get("train_held_out", 0)
    if held_out:
        dropped += f"; {held_out} held out as test {'item' if held_out == 1 else 'items'}"
    weights = f"; weights: {record['weights']}" if record.get("weights") else ""
    return (
        f"# {record['experiment']}: {data_name(config['train'])}\n\n"
        f"{EXPERIMENTS[record['experiment']]}\n\n"
        f"- model: {record['model']} ({record['dtype']}{weights}), task: {record['task']}, "
        f"labels: {', '.join(record['labels'][:20])}\n"
        f"- train: {train} ({record['train_size']} examples{dropped}), test: {test} ({record['n_test']} items)\n"
        f"{baseline_line(record)}{ood_line(record)}"
        f"- {shots}{seeds}, style={config['style']}, calibrate={config['calibrate']}\n"
        f"- run time: {record['seconds']:.0f} s\n\n{table}{PLOT_LINK}"
    )


def baseline_line(record: dict) -> str:
    """The test items' answers and what always giving the commonest one scores: an accuracy is read
    against that, not against 1/labels (runs from before 2026-11-27 do not record it)."""
    counts, majority = record.get("test_label_counts"), record.get("majority")
    if not counts or majority is None:
        return ""
    top = next(iter(counts))
    shown = ", ".join(f"{label} {count}" for label, count in list(counts.items())[:8])
    line = f"- test answers: {shown}; always answering '{top}' scores {majority:.3f}\n"
    extra = record.get("train_only_labels") or []
    if extra:
        line += (f"- train answers no test item has (demonstrations may show them; they are never scored): "
                 f"{', '.join(extra[:8])}\n")
    return line


def ood_line(record: dict) -> str:
    """Where the labels experiment's out-of-distribution inputs came from, when it had some."""
    ood = record["config"].get("ood")
    return f"- out-of-distribution inputs: {shown_path(ood)} ({record['ood_size']} inputs)\n" if ood else ""


def data_name(path: str) -> str:
    """What a report calls the data: the file's name (`sentiment`), or its folder's when the file is
    named after a split (`sst2` for sst2/train.jsonl) and the folder is one a reader chose: not the
    random folder a web page's upload lands in."""
    file = Path(path)
    if file.stem.lower() in SPLIT_NAMES and file.parent.name and not _uploaded(file):
        return file.parent.name
    return file.stem


def shown_path(path: str) -> str:
    """A data path as a report shows it: as typed when relative; an upload by its name alone, since
    the folder it lands in means nothing to a reader; another absolute path relative to the working
    folder when inside it, else whole."""
    file = Path(path)
    if not file.is_absolute():
        return path
    if _uploaded(file):
        return file.name
    return str(file.relative_to(Path.cwd())) if file.is_relative_to(Path.cwd()) else path


def _uploaded(file: Path) -> bool:
    """Whether `file` is in the folder where Gradio keeps a page's uploads (as `gradio.utils.get_upload_folder`
    finds it; not imported here, so the command line does not load Gradio)."""
    uploads = os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio"
    return file.is_absolute() and file.resolve().is_relative_to(Path(uploads).resolve())


def list_runs(folder: str | Path = DEFAULT_RUNS) -> list[dict]:
    """Earlier runs below `folder`, newest first: path, experiment, model, created, train, test, seconds."""
    runs = []
    for path in Path(folder).glob("**/result.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        runs.append({
            "path": str(path.parent), "experiment": record.get("experiment"), "model": record.get("model"),
            "created": record.get("created", ""), "train": record.get("config", {}).get("train"),
            "test": record.get("config", {}).get("test"), "seconds": record.get("seconds"),
        })
    return sorted(runs, key=lambda run: run["created"], reverse=True)
