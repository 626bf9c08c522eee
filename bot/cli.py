"""Command line: ask the bot one question, or prepare the default model's cache.

    python -m bot ask "What is the capital of France?" --json
    python -m bot prepare          # dequantize the default model once (make install runs it)

Parsing lives here; `main(args)` does the work with heavy imports inside it.
"""

from __future__ import annotations

import argparse
import json
import sys


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag or value ends with one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m bot", description="Chat with a language model from the command line.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    ask = commands.add_parser("ask", help="answer one question")
    ask.add_argument("question")
    add_model_flags(ask)
    ask.add_argument("--system", default=None, help="system prompt")
    ask.add_argument("--max-new-tokens", type=positive_int, default=256)
    ask.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of the answer")

    prepare = commands.add_parser("prepare", help="convert and cache a model so later loads are fast")
    add_model_flags(prepare)
    return parser


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="'default', a local folder, a .gguf file or a hub id")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")


def main(args: argparse.Namespace) -> int:
    from bot.models import ModelError, load_model
    from bot.settings import GenerationSettings

    try:
        settings = None
        if args.command == "ask":
            settings = GenerationSettings(
                max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
            )
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    except (ModelError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "prepare":
        print(f"ready: {loaded.name} ({loaded.dtype} on {loaded.device})")
        return 0
    return ask(args, loaded, settings)


def ask(args: argparse.Namespace, loaded, settings) -> int:
    from bot.conversation import PromptTooLong, build_messages
    from bot.generation import Generator

    generator = Generator(loaded)
    messages = build_messages(args.question, system=args.system)
    try:
        if args.json:
            completion = generator.complete(messages, settings)
        else:
            for piece in generator.stream(messages, settings):
                print(piece, end="", flush=True)
            print()
            return 0
    except PromptTooLong as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({
        "answer": completion.text,
        "model": loaded.name,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "seconds": round(completion.seconds, 3),
        "finish_reason": completion.finish_reason,
    }, ensure_ascii=False))
    return 0


def run(argv: list[str] | None = None) -> int:
    return main(build_parser().parse_args(argv))
