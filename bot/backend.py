"""Choose where answers are generated: a local model, or a remote OpenAI-compatible server.

Both give an object with the Generator interface (stream, complete, complete_many, fit, render,
resident_adapters), so the service, UI and CLI do not care which one they hold.
"""

from __future__ import annotations

import argparse

BACKENDS = ("local", "openai")


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local: load --model here; openai: generate on --base-url")
    parser.add_argument("--base-url", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", help="bearer key for --base-url (default: $OPENAI_API_KEY)")
    parser.add_argument("--remote-model", help="the model to ask on --base-url where it serves several, as Ollama "
                                               "does (default: its only base model)")


def add_decode_flags(parser: argparse.ArgumentParser) -> None:
    """How a local model decodes: the fast decoders (on by default on the CPU) and which one."""
    import os

    from bot.generation import DECODERS

    parser.add_argument("--fast-decode", action=argparse.BooleanOptionalAction,
                        default=os.environ.get("ICL_BOT_FAST_DECODE", "1") != "0",
                        help="on the CPU, answer greedy requests with a fast decoder that gives generate's tokens "
                             "(fp32, which --dtype auto then picks): base-model requests, and with the native "
                             "decoder LoRA adapter requests too (default: on; ICL_BOT_FAST_DECODE=0 turns it off)")
    parser.add_argument("--decoder", choices=DECODERS, default=os.environ.get("ICL_BOT_DECODER", "auto"),
                        help="auto: the native C decoder where it can run the model, else plain generate; "
                             "native, compiled or eager (the compiled loop uncompiled, for tests): that one, or an "
                             "error saying why not; $ICL_BOT_DECODER sets the default")


def open_generator(args: argparse.Namespace):
    """A Generator for `--backend local`, a RemoteGenerator for `--backend openai`."""
    import os

    from bot.generation import Generator
    from bot.models import ModelError, load_model, load_tokenizer, pick_device

    if args.backend == "local":
        fast = getattr(args, "fast_decode", False)
        dtype = args.dtype
        if fast and dtype == "auto" and pick_device(args.device) == "cpu":
            dtype = "float32"  # fast decoding gives generate's tokens in fp32; the native decoder needs it
        loaded = load_model(args.model, dtype=dtype, device=args.device, trust_remote_code=args.trust_remote_code)
        return Generator(loaded, fast_decode=fast, decoder=getattr(args, "decoder", "auto"))
    if not args.base_url:
        raise ValueError("--backend openai needs --base-url")
    from bot.remote import RemoteGenerator

    try:  # the local copy of the model's tokenizer, when there is one, fits history exactly
        tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    except (ModelError, OSError):
        tokenizer = None
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
    return RemoteGenerator(args.base_url, api_key=api_key, tokenizer=tokenizer,
                           model=getattr(args, "remote_model", None))
