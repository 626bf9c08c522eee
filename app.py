"""The Gradio web app: a thin shell that wires components to bot.service.

    python app.py                      # http://127.0.0.1:7860, default model
    python app.py --port 8000 --model ./my-model --host 0.0.0.0

On Hugging Face Spaces the same file runs as the Space's `app_file`. The chat endpoint is
`/chat`: see the README for its arguments. No model, prompt or index logic lives here.
"""

from __future__ import annotations

import argparse
import os

import gradio as gr

from ui.text import I18N, t


def build_app(service) -> gr.Blocks:
    """The whole UI around a ready service (tests build it around a tiny model)."""
    with gr.Blocks(title="ICL & LoRA chat") as demo:
        with gr.Row():
            gr.Markdown(t("title"), elem_id="title")
            gr.Textbox(service.model_name, label=t("model"), interactive=False, elem_id="model-name", scale=0)
        with gr.Tab(t("tab_chat")):
            chat_tab(service)
    return demo


def chat_tab(service) -> None:
    from bot.settings import GenerationSettings

    with gr.Accordion(t("prompt_details"), open=False, render=False) as details:
        demos_table = gr.Dataframe(headers=["#", "input", "output", "score"], label=t("demos_used"), interactive=False)
        prompt_box = gr.Textbox(label=t("prompt_sent"), lines=8, max_lines=30, interactive=False)
    settings_box = gr.Accordion(t("settings"), open=False, render=False)
    system = gr.Textbox(label=t("system_prompt"), value="You are a helpful assistant.", lines=2, render=False)
    max_new_tokens = gr.Slider(1, 1024, value=256, step=1, label=t("max_new_tokens"), render=False)
    temperature = gr.Slider(0, 2, value=0, step=0.05, label=t("temperature"), render=False)
    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label=t("top_p"), render=False)

    def respond(message, history, system, max_new_tokens, temperature, top_p):
        try:
            settings = GenerationSettings(
                max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p)
            )
            turns = service.chat(message, history, system, settings)
            for result in turns:
                if result.notice and not result.text:
                    gr.Warning(result.notice)
                yield result.text, demo_rows(result.demos), result.prompt
        except ValueError as error:
            raise gr.Error(str(error)) from error

    gr.ChatInterface(
        respond,
        chatbot=gr.Chatbot(label=t("chat"), height=420, sanitize_html=True, elem_id="chatbot"),
        textbox=gr.Textbox(placeholder=t("type_message"), elem_id="chat-input", show_label=False, scale=7),
        additional_inputs=[system, max_new_tokens, temperature, top_p],
        additional_inputs_accordion=settings_box,
        additional_outputs=[demos_table, prompt_box],
        api_name="chat",
        concurrency_limit=16,
    )
    details.render()


def demo_rows(demos: list[dict]) -> list[list]:
    return [[i + 1, d["input"], d["output"], round(d["score"], 4)] for i, d in enumerate(demos)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the chat app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--model", default=os.environ.get("ICL_BOT_MODEL", "default"))
    parser.add_argument("--dtype", default=os.environ.get("ICL_BOT_DTYPE", "auto"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser.parse_args(argv)


def create_service(args: argparse.Namespace):
    from bot.generation import Generator
    from bot.models import load_model
    from bot.service import ChatService

    loaded = load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    return ChatService(Generator(loaded))


def main(argv=None) -> None:
    args = parse_args(argv)
    demo = build_app(create_service(args))
    demo.queue(default_concurrency_limit=16).launch(server_name=args.host, server_port=args.port, i18n=I18N)


if __name__ == "__main__":
    main()
