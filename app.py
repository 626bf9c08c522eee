"""The Gradio web app: a thin shell that wires components to bot.service.

    python app.py                      # http://127.0.0.1:7860, default model
    python app.py --port 8000 --model ./my-model --host 0.0.0.0

On Hugging Face Spaces the same file runs as the Space's `app_file`. The chat endpoint is
`/chat` (see the README for its arguments); an OpenAI-compatible API is served under `/v1`
(bot/api.py). No model, prompt or index logic lives here.
"""

from __future__ import annotations

import argparse
import os
import sys

import gradio as gr

from bot.backend import add_decode_flags
from ui.chat import chat_tab
from ui.compare import compare_tab
from ui.lab import lab_tab
from ui.pools import pools_tab
from ui.train import train_tab
from ui.text import I18N, t

MAX_UPLOAD = "20mb"
"""Largest file the app accepts (pool uploads); the pool library checks its own limit too."""


def build_app(service, model_spec: str = "default") -> gr.Blocks:
    """The whole UI around a ready service (tests build it around a tiny model).

    `model_spec` is what the Lab and Train tabs load or train on (they run their own fp32 copy).
    """
    with gr.Blocks(title="ICL & LoRA chat") as demo:
        with gr.Row():
            gr.Markdown(t("title"), elem_id="title")
            gr.Textbox(service.model_name, label=t("model"), interactive=False, elem_id="model-name", scale=0,
                       max_lines=1, min_width=360)  # wide enough for a hub id on one line
        with gr.Tab(t("tab_chat")):
            chat = chat_tab(service)
        with gr.Tab(t("tab_compare")):
            compare = compare_tab(service)
        lab = pools = training = None
        if service.library is not None:
            with gr.Tab(t("tab_pools")):
                pools = pools_tab(service, [chat["pool"], compare["pool"]])
            with gr.Tab(t("tab_lab")):
                lab = lab_tab(service, model_spec)
        if service.adapters is not None:
            with gr.Tab(t("tab_train")):
                training = train_tab(model_spec)
        keep_pickers_current(demo, service, chat, compare, lab, pools)
        # A closed page stops its comparison (the chat's stream already ends with its connection);
        # its lab and training runs go on, and their results are saved. Its training run can then be
        # stopped from any page.
        demo.unload(compare["halt"])
        if training is not None:
            demo.unload(training["release"])
    return demo


def keep_pickers_current(demo: gr.Blocks, service, chat: dict, compare: dict, lab: dict | None,
                         pools_table: gr.Dataframe | None = None) -> None:
    """Every adapter and pool picker, the Lab's runs and the Pools tab's table, as they are now: when
    a page opens (the lists were built when the app started) and when the Chat tab's refresh is pressed. A picked
    adapter or pool that is gone falls back to the base model or no pool (Gradio refuses a value
    that is not among the choices, and the chat would stay stuck on it)."""
    from bot.generation import BASE
    from ui.chat import NO_POOL, pool_choices
    from ui.lab import runs_folder, runs_table
    from ui.pools import pool_rows

    adapter_pickers = [chat["adapter"], compare["models"]] + ([lab["adapter"]] if lab else [])
    pool_pickers = [chat["pool"], compare["pool"]]

    def current(*picked):
        adapters, pools = service.adapter_choices(), pool_choices(service)
        updates = [
            gr.update(choices=adapters, value=[name for name in value or [] if name in adapters])  # Compare's ticks
            if isinstance(picker, gr.CheckboxGroup)
            else gr.update(choices=adapters, value=value if value in adapters else BASE)
            for picker, value in zip(adapter_pickers, picked)
        ]
        updates += [gr.update(choices=pools, value=value if value in pools else NO_POOL)
                    for value in picked[len(adapter_pickers):]]
        lists = [runs_table(runs_folder())] if lab else []
        return updates + lists + ([pool_rows(service)] if pools_table is not None else [])

    pickers = adapter_pickers + pool_pickers
    outputs = pickers + ([lab["runs"]] if lab else []) + ([pools_table] if pools_table is not None else [])
    demo.load(current, inputs=pickers, outputs=outputs, api_name=False)
    chat["refresh"].click(current, inputs=pickers, outputs=outputs, api_name=False)


def parse_args(argv=None) -> argparse.Namespace:
    from bot.cli import DefaultsHelpFormatter, OneLineParser, add_model_flags

    parser = OneLineParser(description="Serve the chat app.", formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on; 0.0.0.0 for every interface; $GRADIO_SERVER_NAME sets the default")
    parser.add_argument("--port", type=port_number, default=os.environ.get("GRADIO_SERVER_PORT", "7860"),
                        help="port to listen on; $GRADIO_SERVER_PORT sets the default")
    add_model_flags(parser, env=True)
    add_decode_flags(parser)
    parser.add_argument("--hub-adapter", action="append", metavar="ID", help="attach this hub adapter at start "
                        "(repeatable; default: the comma-separated ids in ICL_BOT_HUB_ADAPTERS)")
    args = parser.parse_args(argv)
    if args.hub_adapter is None:
        args.hub_adapter = [i.strip() for i in os.environ.get("ICL_BOT_HUB_ADAPTERS", "").split(",") if i.strip()]
    return args


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 1 to 65535, got '{text}'")
    return int(text)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on (a ValueError that says so) before the model loads."""
    import socket

    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as error:  # gaierror too: a host name that does not resolve
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error


def create_service(args: argparse.Namespace):
    from adapters.host import AdapterHost
    from bot.backend import open_generator
    from bot.service import ChatService
    from retrieval.library import PoolLibrary

    generator = open_generator(args)
    if getattr(generator, "fast_note", ""):
        print(generator.fast_note, flush=True)
    adapters = AdapterHost(generator.loaded, generator.lock) if args.backend == "local" else None
    service = ChatService(generator, PoolLibrary(), adapters)
    for hub_id in getattr(args, "hub_adapter", None) or []:
        try:  # a hub adapter that cannot load must not keep the app from serving the rest
            print(f"hub adapter {hub_id} attached as '{service.use_adapter(hub_id)}'", flush=True)
        except ValueError as error:
            print(f"warning: hub adapter {hub_id} not attached: {error}", file=sys.stderr, flush=True)
    return service


def create_server(service, api_key: str | None = None, users: list[tuple[str, str]] | None = None,
                  model_spec: str = "default"):
    """One ASGI app: the OpenAI-compatible API under /v1 and the Gradio UI at /.

    `users` turns on a login page for the UI; the API is guarded by `api_key` instead.
    """
    from bot.api import create_api

    demo = build_app(service, model_spec).queue(default_concurrency_limit=16)
    return gr.mount_gradio_app(
        create_api(service, api_key), demo, path="/", i18n=I18N, max_file_size=MAX_UPLOAD, auth=users or None
    )


def users_from_env(text: str | None) -> list[tuple[str, str]]:
    """`ICL_BOT_USERS="alice:secret,bob:other"` -> [("alice", "secret"), ("bob", "other")]."""
    users = []
    for entry in filter(None, (part.strip() for part in (text or "").split(","))):
        name, sep, password = entry.partition(":")
        if not sep or not name or not password:
            raise ValueError(f"ICL_BOT_USERS entries are name:password; got '{name}{sep}…'")
        users.append((name, password))
    return users


def main(argv=None) -> None:
    import uvicorn

    from bot.paths import ensure_data_home

    args = parse_args(argv)
    try:
        # Uploads land inside the data home too, so the app writes nowhere else.
        os.environ.setdefault("GRADIO_TEMP_DIR", str(ensure_data_home() / "uploads"))
        check_port_free(args.host, args.port)  # before the model loads, not after
        users = users_from_env(os.environ.get("ICL_BOT_USERS"))
        service = create_service(args)
    except ValueError as error:  # a bad model, device, dtype or user list: the message names it
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    server = create_server(service, api_key=os.environ.get("ICL_BOT_API_KEY"), users=users, model_spec=args.model)
    print(f"serving http://{args.host}:{args.port}/ (API at /v1)", flush=True)
    uvicorn.run(server, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
