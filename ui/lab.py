"""The Lab tab: run an in-context-learning experiment (lab/) on the served model and show its
table and plot; earlier runs are listed. One experiment runs at a time, with a progress bar."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from retrieval.rows import FORMATS
from ui.escape import shown_error
from ui.pickers import current_dropdown
from ui.text import t


NO_OOD = "none"
"""The out-of-distribution picker's first choice: the labels experiment without its `ood` condition."""


def pool_files() -> dict[str, str]:
    """Built-in pools by name -> file path."""
    from retrieval.pool import builtin_pools

    return {name: str(path) for name, path in builtin_pools().items()}


def runs_table(folder) -> list[list]:
    from lab.runner import list_runs, shown_path

    return [[r["created"], r["experiment"], r["model"], shown_path(r["train"] or ""), shown_path(r["test"] or ""),
             r["seconds"], shown_path(r["path"])] for r in list_runs(folder)]  # as the reports show paths


def model_fields(service, adapter: str) -> dict:
    """LabConfig fields that run experiments where the chat runs: here, or on the chat's remote server."""
    from bot.remote import RemoteGenerator

    generator = service.generator
    if isinstance(generator, RemoteGenerator):
        return {"backend": "openai", "base_url": str(generator.client.base_url).rstrip("/"), "api_key": generator.api_key,
                "adapter": None if adapter == "base" else adapter, "remote_model": generator.name}
    return {"adapter": None if adapter == "base" else str(service.adapters.registry.resolve(adapter).path)}


def runs_folder():
    from bot.paths import data_home

    return data_home() / "runs"


def parse_seeds(text: str) -> list[int]:
    """ "0 1, 2" -> [0, 1, 2], or a ValueError that says what a seed must be."""
    return parse_numbers(text, "seeds", empty=False)


def parse_numbers(text: str, what: str, empty: bool = True) -> list[int]:
    """Whole numbers separated by spaces or commas ("" is [] where `empty`), or a ValueError naming `what`."""
    parts = text.replace(",", " ").split()
    bad = [part for part in parts if not part.isdigit()]
    if (not parts and not empty) or bad:
        raise ValueError(f"{what} must be whole numbers separated by spaces or commas, got '{text.strip()}'")
    return [int(part) for part in parts]


def lab_tab(service, model_spec: str) -> dict:
    """Build the tab; return its adapter picker and runs table so that the app can keep them up to date."""
    from bot.docstrings import field_default
    from lab.config import LabConfig
    from lab.runner import EXPERIMENTS

    runs = runs_folder()
    pools = pool_files()
    with gr.Row():
        with gr.Column():
            experiment = gr.Dropdown(list(EXPERIMENTS), value="order", label=t("experiment"), elem_id="lab-experiment")
            about = {name: gr.Markdown(t(f"about_{name}"), visible=name == "order", elem_id=f"lab-about-{name}")
                     for name in EXPERIMENTS}
            train = gr.Dropdown(list(pools), value="sentiment", label=t("train_pool"))
            test = gr.Dropdown(list(pools), value="sentiment", label=t("test_pool"))
            ood = gr.Dropdown([(t("no_ood"), NO_OOD), *pools], value=NO_OOD, label=t("ood_pool"), visible=False,
                              elem_id="lab-ood")
            with gr.Row():
                train_file = gr.File(label=t("train_file"), file_types=list(FORMATS), type="filepath")
                test_file = gr.File(label=t("test_file"), file_types=list(FORMATS), type="filepath")
        with gr.Column():
            k = gr.Slider(0, 8, value=4, step=1, label=t("k"), elem_id="lab-k")
            n_test = gr.Slider(4, 500, value=40, step=1, label=t("n_test"))
            seeds = gr.Textbox("0 1", label=t("seeds"))
            train_sizes = gr.Textbox("", label=t("train_sizes"), visible=False, elem_id="lab-train-sizes")
            train_steps = gr.Slider(1, 2000, value=field_default(LabConfig, "train_steps"), step=1,
                                    label=t("lab_train_steps"), visible=False, elem_id="lab-train-steps")
            permutations = gr.Slider(1, 120, value=24, step=1, label=t("permutations"),  # order is the first shown
                                     elem_id="lab-permutations")
            adapter = current_dropdown(service.adapter_choices, why_not=service.why_not_offered, value="base",
                                       label=t("adapter"))
            run = gr.Button(t("run_experiment"), variant="primary", elem_id="lab-run")
    report = gr.Markdown(elem_id="lab-report")
    finished = gr.State()
    """The folder of the run that just finished, for the plot and the runs list."""
    plot = gr.Image(show_label=False, type="filepath", interactive=False)  # an I18n label shows as [object Object]
    table = gr.Dataframe(runs_table(runs), headers=["created", "experiment", "model", "train", "test", "seconds", "path"],
                         label=t("earlier_runs"), interactive=False)

    def start(experiment, train, test, train_file, test_file, k, n_test, seeds, permutations, adapter, ood=NO_OOD,
              train_sizes="", train_steps=None, progress=gr.Progress()):
        from lab.runner import PLOT_LINK, run_experiment

        try:
            config = LabConfig(
                train=train_file or pools[train], test=test_file or pools[test], model=model_spec,
                k=int(k), n_test=int(n_test), seeds=parse_seeds(seeds),
                permutations=int(permutations), embedder="default", out=None, **model_fields(service, adapter),
                ood=pools[ood] if experiment == "labels" and ood in pools else None,
                train_sizes=parse_numbers(train_sizes or "", "training sizes") if experiment == "finetune" else [],
                train_steps=field_default(LabConfig, "train_steps") if train_steps is None else int(train_steps),
            )
            folder = run_experiment(experiment, config, progress=lambda fraction, what: progress(fraction, desc=what),
                                    runs=runs)
        except ValueError as error:  # an upload is named by its file name, not where the server keeps it
            message = str(error)
            for upload in (train_file, test_file):
                message = message.replace(upload, Path(upload).name) if upload else message
            raise shown_error(message) from error
        report = (folder / "report.md").read_text().removesuffix(PLOT_LINK)  # the plot shows beside it
        return report, str(folder)

    def show_run(folder):
        return str(Path(folder) / "plot.png"), runs_table(runs)

    def controls(name):
        """The experiment's description (one per experiment, so that each is translated), and only the
        controls it reads: shots sweeps its own ks, only order scores permutations, only labels takes
        out-of-distribution inputs, only finetune trains (its steps, its sweep over training sizes)."""
        shown = [gr.update(visible=name == other) for other in about]
        return (*shown, gr.update(visible=name != "shots"), gr.update(visible=name == "order"),
                gr.update(visible=name == "labels"), *[gr.update(visible=name == "finetune")] * 2)

    experiment.change(controls, experiment, [*about.values(), k, permutations, ood, train_sizes, train_steps],
                      api_name=False)
    # The report is the run's output, where its progress and any error show; the plot and the runs list
    # follow once it succeeded (Gradio marks a failed event's every output "Error", the list included).
    run.click(start, [experiment, train, test, train_file, test_file, k, n_test, seeds, permutations, adapter, ood,
                      train_sizes, train_steps],
              [report, finished], api_name="lab", concurrency_limit=1,
              ).success(show_run, finished, [plot, table], api_name=False)
    return {"adapter": adapter, "runs": table}
