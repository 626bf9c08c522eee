"""The Pools tab: upload a pool file and build a FAISS index from it, with progress."""

from __future__ import annotations

import gradio as gr

from retrieval.library import PoolExistsError
from retrieval.pool import BadRowsError, MissingColumnError
from retrieval.rows import FORMATS
from ui.chat import pool_choices
from ui.escape import shown_error
from ui.text import EN, t


def pool_rows(service) -> list[list[str]]:
    """The Pools tab's table: each pool's name and kind."""
    return [[name, kind] for name, kind in service.library.names().items()]


def pools_tab(service, pool_pickers: list[gr.Dropdown]) -> gr.Dataframe:
    """Build the tab; return its table of pools, so that the app can keep it up to date."""

    with gr.Row():
        with gr.Column():
            upload = gr.File(label=t("upload_pool"), file_types=list(FORMATS), type="filepath", elem_id="pool-upload")
            name = gr.Textbox(label=t("index_name"), placeholder="my-pool", elem_id="pool-name")
            with gr.Row():
                input_field = gr.Textbox("input", label=t("input_field"))
                output_field = gr.Textbox("output", label=t("output_field"))
            task = gr.Textbox(label=t("task_description"), lines=2)
            skip_bad = gr.Checkbox(False, label=t("skip_bad"))
            replace = gr.Checkbox(False, label=t("replace_pool"), elem_id="pool-replace")
            build = gr.Button(t("build_index"), variant="primary", elem_id="pool-build")
            status = gr.Markdown()
        table = gr.Dataframe(pool_rows(service), headers=["name", "kind"], label=t("pools_available"),
                             interactive=False,
                             elem_id="pools-table")

    def build_index(path, name, input_field, output_field, task, skip_bad, replace=False, progress=gr.Progress()):
        """Build the index; its note, or an error shown as text (a toast renders HTML, and a file's
        column names or a typed name reach these messages)."""
        try:
            return build_note(path, name, input_field, output_field, task, skip_bad, replace, progress)
        except ValueError as error:
            raise shown_error(error) from error

    def build_note(path, name, input_field, output_field, task, skip_bad, replace, progress):
        if not path:
            raise ValueError("choose a pool file to upload")
        if not name.strip():
            raise ValueError(f"type a name for the index in '{EN['index_name']}'")

        def report(done: int, total: int):
            progress(done / max(total, 1), desc=f"embedding {done}/{total}")

        try:
            index = service.library.build_from_upload(
                name.strip(), path, input_field=input_field.strip(), output_field=output_field.strip(),
                skip_bad=bool(skip_bad), task=task.strip() or None, progress=report, replace=bool(replace),
            )
        except BadRowsError as error:  # errors stay in English (ui/text.py)
            raise ValueError(f"{error}; tick '{EN['skip_bad']}' to leave them out") from error
        except PoolExistsError as error:
            raise ValueError(f"{error}: tick '{EN['replace_pool']}'") from error
        except MissingColumnError as error:
            box = EN["input_field" if error.field == "input" else "output_field"]
            raise ValueError(f"{error}; type the column's name in '{box}'") from error
        notes = index.pool.notes()  # counts and numbers only, nothing from the file that Markdown could render
        extra = f" ({'; '.join(notes)})" if notes else ""
        examples = "example" if len(index) == 1 else "examples"
        return f"Built **{name.strip()}**: {len(index)} {examples}{extra}."  # a valid name: letters, digits, - and _

    def lists():
        return pool_rows(service), *[gr.update(choices=pool_choices(service))] * len(pool_pickers)

    # The last build's note goes first, so that it never stands beside this build's error. Only the
    # note is the build's output: Gradio marks a failed event's every output "Error", which left the
    # pool pickers of the other tabs marked and blocked; the lists update once the build succeeded.
    build.click(lambda: "", None, status, queue=False, api_name=False).then(
        build_index, [upload, name, input_field, output_field, task, skip_bad, replace], status, api_name="build_index",
    ).success(lists, None, [table, *pool_pickers], api_name=False)
    return table
