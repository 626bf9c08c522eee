"""The Chat tab: streaming chat with a system prompt, sampling settings, an adapter picker and
few-shot demonstrations from a pool. The function keeps Gradio's `fn(message, history, ...)` shape."""

from __future__ import annotations

import threading
from collections import OrderedDict

import gradio as gr

from bot.conversation import turn_text
from bot.settings import MAX_TEMPERATURE
from ui.escape import EscapingChatbot, from_client, shown_error
from ui.pickers import current_dropdown
from ui.text import t

NO_POOL = "(none)"
DEFAULT_SYSTEM = "You are a helpful assistant."
FAILED = "⚠️ "
"""Starts an answer that is an error message: shown in the chat, never sent back to the model."""



def pool_choices(service) -> list:
    """The pool picker's choices: no pool (its value NO_POOL, shown in the page's language), then the
    pools the service offers."""
    return [(t("no_pool"), NO_POOL), *service.pool_choices()]


def settings_from(max_new_tokens, temperature, top_p, seed=None):
    from bot.settings import GenerationSettings

    return GenerationSettings(
        max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
        seed=None if seed is None else int(seed),
    )


def fewshot_from(pool, mode, k, select, order, seed=0):
    """The few-shot request, or None for plain chat (no pool chosen); `seed` draws random selections and orders."""
    from bot.service import FewShot

    if not pool or pool == NO_POOL:
        return None
    return FewShot(pool=pool, mode=mode, k=int(k), select=select, order=order, seed=int(seed or 0))


class LastNotices:
    """The last notice each browser session was shown, so that the same one is not shown again with
    every message (the "earlier turns are not sent" notice would cover the controls each time)."""

    def __init__(self, sessions: int = 1000):
        self.sessions = sessions
        self._last: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def fresh(self, session: str | None, notice: str) -> bool:
        """Whether to show `notice` to `session` now; a session of None (no request) always sees it."""
        if session is None:
            return True
        with self._lock:
            seen = self._last.pop(session, None) == notice
            self._last[session] = notice
            while len(self._last) > self.sessions:  # the oldest sessions are forgotten
                self._last.popitem(last=False)
        return not seen


def without_failures(history: list[dict]) -> list[dict]:
    """The chat history minus each failed exchange (a user message answered by an error)."""
    kept: list[dict] = []
    for message in history:
        content = turn_text(message.get("content"))
        if message.get("role") == "assistant" and content is not None and content.startswith(FAILED):
            if kept and kept[-1].get("role") == "user":
                kept.pop()
            continue
        kept.append(message)
    return kept


def check_message(message: str):
    """Refuse an empty message before it enters the chat (Gradio's validator: the box stays usable)."""
    return gr.validate(bool(message and message.strip()), "the message is empty")


def demo_rows(demos: list[dict]) -> list[list]:
    return [[i + 1, d["input"], d["output"], round(d["score"], 4)] for i, d in enumerate(demos)]


def shown_choices(values: list[str]) -> list[tuple]:
    """(shown name in the page's language, value) pairs: the API and the code keep the values."""
    return [(t(f"choice_{value}"), value) for value in values]


def fewshot_controls(service) -> dict:
    """Pool, mode, k, selection and order inputs (unrendered: the caller places them)."""
    return {
        "pool": current_dropdown(lambda: pool_choices(service), value=NO_POOL, label=t("pool"), render=False),
        "mode": gr.Radio(shown_choices(["zero", "one", "few"]), value="few", label=t("mode"), render=False),
        "k": gr.Slider(0, 16, value=4, step=1, label=t("k"), render=False),
        "select": gr.Dropdown(shown_choices(["knn", "random", "mmr"]), value="knn", label=t("selection"), render=False),
        "order": gr.Dropdown(shown_choices(["nearest-last", "nearest-first", "random"]), value="nearest-last",
                             label=t("demo_order"), render=False),
    }


def chat_tab(service) -> dict:
    """Build the tab; return the pool and adapter pickers (the app keeps every tab's up to date) and
    the adapters' refresh button."""
    with gr.Accordion(t("prompt_details"), open=False, render=False) as details:
        demos_table = gr.Dataframe(headers=["#", "input", "output", "score"], label=t("demos_used"), interactive=False)
        prompt_box = gr.Textbox(label=t("prompt_sent"), lines=8, max_lines=30, interactive=False)
    system = gr.Textbox(label=t("system_prompt"), value=DEFAULT_SYSTEM, lines=2, render=False)
    max_new_tokens = gr.Slider(1, 1024, value=256, step=1, label=t("max_new_tokens"), render=False)
    temperature = gr.Slider(0, MAX_TEMPERATURE, value=0, step=0.05, label=t("temperature"), render=False)
    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label=t("top_p"), render=False)
    adapter = current_dropdown(service.adapter_choices, why_not=service.why_not_offered, value="base",
                               label=t("adapter"), render=False)
    few = fewshot_controls(service)
    demo_seed = gr.Number(0, precision=0, minimum=0, label=t("demo_seed"), render=False)

    notices = LastNotices()

    def respond(message, history, system, max_new_tokens, temperature, top_p, adapter, pool, mode, k, select, order,
                demo_seed=0, request: gr.Request = None):
        # In the page an error is the answer, marked, rather than a raised gr.Error, after which Gradio's
        # chat would keep the input box disabled; the marked exchange never reaches the model again.
        # A gradio_client call (it sends `x-gradio-user: api`) gets the error as an error.
        try:
            turns = service.chat(
                message, without_failures(history), system, settings_from(max_new_tokens, temperature, top_p),
                adapter=adapter, fewshot=fewshot_from(pool, mode, k, select, order, demo_seed),
            )
            warned = False
            for result in turns:
                if result.notice and not warned:
                    if notices.fresh(request.session_hash if request else None, result.notice):
                        gr.Warning(result.notice)
                    warned = True
                yield result.text, demo_rows(result.demos), result.prompt
        except ValueError as error:
            if from_client():
                raise shown_error(error) from error
            yield f"{FAILED}{error}", [], ""

    with gr.Row(equal_height=True):
        adapter.render()
        refresh = gr.Button(t("refresh_adapters"), size="sm", scale=0, min_width=120)
        for control in few.values():
            control.render()
        demo_seed.render()
    gr.ChatInterface(
        respond,
        chatbot=EscapingChatbot(label=t("chat_box"), height=420, elem_id="chatbot"),
        textbox=gr.Textbox(placeholder=t("type_message"), label=t("message"), elem_id="chat-input", show_label=False,
                           scale=7, submit_btn=True, stop_btn=True),  # the label is for screen readers
        validator=check_message,
        additional_inputs=[system, max_new_tokens, temperature, top_p, adapter, *few.values(), demo_seed],
        additional_inputs_accordion=gr.Accordion(t("settings"), open=False, render=False),
        additional_outputs=[demos_table, prompt_box],
        api_name="chat",
        concurrency_limit=16,
    )
    details.render()
    return {"pool": few["pool"], "adapter": adapter, "refresh": refresh}
