"""The Compare tab: one prompt answered by the base and up to four adapters side by side, in one
batched call, with the same demonstrations and the same seed."""

from __future__ import annotations

import gradio as gr

from bot.settings import MAX_TEMPERATURE
from ui.chat import DEFAULT_SYSTEM, demo_rows, fewshot_controls, fewshot_from, settings_from
from ui.escape import shown_error
from ui.text import t

SLOTS = 5


def compare_tab(service) -> dict:
    """Build the tab; return its model and pool pickers so that the app can keep them up to date."""
    with gr.Row():
        with gr.Column(scale=2):
            message = gr.Textbox(label=t("message"), lines=3, elem_id="compare-input")
            models = gr.CheckboxGroup(service.adapter_choices(), value=["base"], label=t("compare_models"),
                                      elem_id="compare-models")
            with_demos = gr.Checkbox(False, label=t("compare_fewshot"), elem_id="compare-fewshot")
            run = gr.Button(t("compare_run"), variant="primary", elem_id="compare-run")
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

    def compare(message, models, with_demos, pool, mode, k, select, order, max_new_tokens, temperature, seed,
                system=DEFAULT_SYSTEM, top_p=1.0):
        if len(models or []) > SLOTS:
            raise shown_error(f"compare at most {SLOTS} models at once; {len(models)} are chosen")
        try:
            fewshot = fewshot_from(pool, mode, k, select, order, seed) if with_demos else None
            if with_demos and fewshot is None:
                raise ValueError("choose a demonstration pool to add few-shot demonstrations")
            results = service.compare(
                message, list(models or []), system=system,
                settings=settings_from(max_new_tokens, temperature, top_p, seed),
                fewshot=fewshot,
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
    return {"models": models, "pool": few["pool"]}
