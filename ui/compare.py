"""The Compare tab: one prompt answered by the base and up to four adapters side by side, in one
batched call, with the same demonstrations and the same seed. Stop ends every answer at its next
token and shows them as far as they got; closing the page ends them too."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import gradio as gr

from bot.settings import MAX_TEMPERATURE
from ui.chat import DEFAULT_SYSTEM, demo_rows, fewshot_controls, fewshot_from, settings_from
from ui.escape import shown_error
from ui.pickers import current_checkbox_group
from ui.text import t

SLOTS = 5


class RunningCompares:
    """Each browser session's running comparison, so that its Stop ends that one and no other."""

    def __init__(self):
        self._cancels: dict[str | None, threading.Event] = {}
        self._lock = threading.Lock()

    @contextmanager
    def run(self, session: str | None):
        cancel = threading.Event()
        with self._lock:
            self._cancels[session] = cancel
        try:
            yield cancel
        finally:
            with self._lock:
                if self._cancels.get(session) is cancel:
                    del self._cancels[session]

    def stop(self, session: str | None) -> None:
        with self._lock:
            cancel = self._cancels.get(session)
        if cancel is not None:
            cancel.set()


def compare_tab(service) -> dict:
    """Build the tab; return its model and pool pickers, so that the app can keep them up to date, and
    `halt`, which stops the calling session's run (the app calls it when a page closes)."""
    with gr.Row():
        with gr.Column(scale=2):
            message = gr.Textbox(label=t("message"), lines=3, elem_id="compare-input")
            models = current_checkbox_group(service.adapter_choices, why_not=service.why_not_offered, value=["base"],
                                            label=t("compare_models"), elem_id="compare-models")
            with_demos = gr.Checkbox(False, label=t("compare_fewshot"), elem_id="compare-fewshot")
            with gr.Row():
                run = gr.Button(t("compare_run"), variant="primary", elem_id="compare-run")
                stop = gr.Button(t("compare_stop"), variant="stop", elem_id="compare-stop")
        with gr.Column(scale=1):
            few = fewshot_controls(service)
            for control in few.values():
                control.render()
            max_new_tokens = gr.Slider(1, 1024, value=128, step=1, label=t("max_new_tokens"))
            temperature = gr.Slider(0, MAX_TEMPERATURE, value=0, step=0.05, label=t("temperature"))
            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label=t("top_p"), elem_id="compare-top-p")
            seed = gr.Number(0, precision=0, minimum=0, label=t("seed"))
            system = gr.Textbox(label=t("system_prompt"), value=DEFAULT_SYSTEM, lines=2)  # the Chat tab's default
    with gr.Row():
        answers = [gr.Textbox(label=f"#{i + 1}", lines=6, visible=i == 0, elem_id=f"compare-answer-{i}")
                   for i in range(SLOTS)]
    with gr.Accordion(t("prompt_details"), open=False):
        demos_table = gr.Dataframe(headers=["#", "input", "output", "score"], label=t("demos_used"), interactive=False)
        prompt_box = gr.Textbox(label=t("prompt_sent"), lines=8, interactive=False)

    running = RunningCompares()

    def compare(message, models, with_demos, pool, mode, k, select, order, max_new_tokens, temperature, seed,
                system=DEFAULT_SYSTEM, top_p=1.0, request: gr.Request = None):
        if len(models or []) > SLOTS:
            raise shown_error(f"compare at most {SLOTS} models at once; {len(models)} are chosen")
        session = request.session_hash if request else None
        try:
            fewshot = fewshot_from(pool, mode, k, select, order, seed) if with_demos else None
            if with_demos and fewshot is None:
                raise ValueError("choose a demonstration pool to add few-shot demonstrations")
            with running.run(session) as cancel:
                results = service.compare(
                    message, list(models or []), system=system,
                    settings=settings_from(max_new_tokens, temperature, top_p, seed), fewshot=fewshot, cancel=cancel,
                )
        except ValueError as error:
            raise shown_error(error) from error
        boxes = [gr.update(value=r.text, label=name, visible=True) for name, r in zip(models, results)]
        boxes += [gr.update(value="", visible=False)] * (SLOTS - len(boxes))
        return *boxes, demo_rows(results[0].demos), results[0].prompt

    run.click(
        compare, [message, models, with_demos, *few.values(), max_new_tokens, temperature, seed, system, top_p],
        [*answers, demos_table, prompt_box], api_name="compare",
    )

    async def halt(request: gr.Request = None):
        running.stop(request.session_hash if request else None)

    # Off the queue, so that the stop never waits behind the work it ends; the answers so far show
    # when the run returns. A click before the run reached the model has nothing to stop.
    stop.click(halt, None, None, api_name="compare_stop", queue=False)
    return {"models": models, "pool": few["pool"], "halt": halt}
