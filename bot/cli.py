"""Command line: ask the bot one question, or prepare the default model's cache.

    python -m bot ask "What is the capital of France?" --json
    python -m bot prepare          # dequantize the default model once (make install runs it)

Parsing lives here; `main(args)` does the work with heavy imports inside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from bot.backend import add_backend_flags, add_decode_flags


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag or value ends with one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def library_output_to_stderr():
    """Send what libraries print on stdout to stderr while a command works (DeepSpeed, imported by
    accelerate, logs its accelerator there), so that stdout holds only the command's result line."""
    return contextlib.redirect_stdout(sys.stderr)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that ends each option with its default, unless the text already says it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS or default == []
        if unset or not action.option_strings or "(default" in text:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def list_item(text: str) -> int:
    """One number of a list flag (`--permutation 2 0 1`). Such a flag takes every word after it, so a
    question written after the list lands here: the message says how to place it."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a whole number; the list takes every word after the flag, so put the question "
            "before it, or end the list with --") from None


def build_parser() -> argparse.ArgumentParser:
    from bot.docstrings import field_default, help_texts
    from bot.service import FewShot
    from bot.settings import GenerationSettings

    parser = OneLineParser(prog="python -m bot", description="Chat with a language model from the command line.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    ask = commands.add_parser("ask", help="answer one question", formatter_class=DefaultsHelpFormatter)
    ask.add_argument("question")
    add_model_flags(ask)
    add_decode_flags(ask)
    sampling = help_texts(GenerationSettings)
    ask.add_argument("--system", default=None, help="system prompt (default: none)")
    ask.add_argument("--max-new-tokens", type=positive_int, default=256, help=sampling["max_new_tokens"])
    ask.add_argument("--temperature", type=float, default=0.0, help=sampling["temperature"])
    ask.add_argument("--top-p", type=float, default=1.0, help=sampling["top_p"])
    ask.add_argument("--seed", type=int, default=None, help=sampling["seed"] + " (default: none)")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of the answer")
    ask.add_argument("--adapter", default="base",
                     help="a LoRA adapter: a name in the adapters folder, a hub id or a path; 'base' for none")
    fewshot = ask.add_argument_group("few-shot prompts", "used with --pool; without it the question goes as it is")
    shots = help_texts(FewShot)
    fewshot.add_argument("--pool", help="demonstration pool: a built-in name, an index folder or a pool file")
    fewshot.add_argument("--mode", choices=["zero", "one", "few"], default="few", help=shots["mode"])
    fewshot.add_argument("--k", type=int, default=None,
                         help=f"{shots['k']} 0 gives the zero-shot prompt. (default: {field_default(FewShot, 'k')})")
    fewshot.add_argument("--select", choices=["knn", "random", "mmr", "fixed"], default="knn", help=shots["select"])
    fewshot.add_argument("--order", choices=["nearest-last", "nearest-first", "random", "permutation"],
                         default="nearest-last", help=shots["order"])
    fewshot.add_argument("--demo-seed", type=int, default=0, help=shots["seed"])
    fewshot.add_argument("--diversity", type=float, default=0.5, help=shots["diversity"] + " 0-1.")
    fewshot.add_argument("--style", choices=["chat", "text"], default="chat", help=shots["style"])
    fewshot.add_argument("--fixed-ids", type=list_item, nargs="+", help=shots["fixed_ids"])
    fewshot.add_argument("--permutation", type=list_item, nargs="+", help=shots["permutation"])

    prepare = commands.add_parser("prepare", help="convert and cache a model so later loads are fast",
                                  formatter_class=DefaultsHelpFormatter)
    add_model_flags(prepare)
    return parser


def add_model_flags(parser: argparse.ArgumentParser, env: bool = False) -> None:
    """Which model to load and how. With `env` (the app's, set on a Space), $ICL_BOT_MODEL and
    $ICL_BOT_DTYPE give the defaults."""
    import os

    from bot.models import DTYPES

    def default(variable: str, value: str) -> str:
        return os.environ.get(variable, value) if env else value

    def note(variable: str) -> str:
        return f"; ${variable} sets the default" if env else ""

    parser.add_argument("--model", default=default("ICL_BOT_MODEL", "default"),
                        help="'default', a local folder, a .gguf file or a hub id" + note("ICL_BOT_MODEL"))
    parser.add_argument("--dtype", default=default("ICL_BOT_DTYPE", "auto"), choices=DTYPES,
                        help="weights' dtype; auto: float32 when decoding fast on the CPU, else bfloat16 where "
                             "supported, float16 otherwise" + note("ICL_BOT_DTYPE"))
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:1, mps, or auto: the first of cuda, mps, cpu that is available")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    add_backend_flags(parser)


def main(args: argparse.Namespace) -> int:
    from bot.backend import open_generator
    from bot.paths import ensure_data_home

    try:
        if args.backend == "local" or getattr(args, "pool", None):  # a model cache, or pools, live there
            ensure_data_home()
        request = ask_request(args) if args.command == "ask" else None
        generator = open_generator(args)
    except ValueError as error:  # ModelError and RemoteError are ValueErrors with the whole story
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "prepare":
        print(f"ready: {generator.name}")
        return 0
    if getattr(generator, "fast_note", ""):  # why the fast decoder cannot run this model
        print(generator.fast_note, file=sys.stderr)
    try:
        return ask(args, generator, request)
    except ValueError as error:  # bad pool, k, adapter, prompt too long: all name the problem
        print(f"error: {error}", file=sys.stderr)
        return 2


def ask_request(args: argparse.Namespace) -> dict:
    """The keyword arguments of ChatService.chat, validated before the model loads."""
    from bot.service import FewShot, check_pool
    from bot.settings import GenerationSettings

    if not args.question.strip():
        raise ValueError("the message is empty")

    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    fewshot = None
    if args.k is not None and args.mode != "few":
        raise ValueError(f"--k sets the demonstrations of --mode few; --mode {args.mode} shows "
                         f"{'one' if args.mode == 'one' else 'none'} (drop --k, or use --mode few)")
    if args.pool:
        fewshot = FewShot(
            pool=args.pool, mode=args.mode, k=FewShot.k if args.k is None else args.k, select=args.select, order=args.order,
            seed=args.demo_seed,
            diversity=args.diversity, style=args.style,
            fixed_ids=tuple(args.fixed_ids) if args.fixed_ids else None,
            permutation=tuple(args.permutation) if args.permutation else None,
        )
        from retrieval.library import PoolLibrary

        check_pool(args.pool, PoolLibrary().names())  # the names only: no embedder loads
    return {"system": args.system, "settings": settings, "fewshot": fewshot}


def ask(args: argparse.Namespace, generator, request: dict) -> int:
    from bot.service import ChatService

    library = None
    if request["fewshot"] is not None:
        from retrieval.library import PoolLibrary

        library = PoolLibrary()
    adapter = attach_adapter(generator, args.adapter) if args.backend == "local" else args.adapter
    service = ChatService(generator, library)
    result, shown = None, 0
    for result in service.chat(args.question, adapter=adapter, **request):
        if not args.json:
            print(result.text[shown:], end="", flush=True)
            shown = len(result.text)
    if not args.json:
        print()
        if result.notice:
            print(f"note: {result.notice}", file=sys.stderr)
        return 0
    completion = result.completion
    answer = {
        "answer": result.text,
        "model": generator.name,
        "adapter": adapter,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "seconds": round(completion.seconds, 3),
        "finish_reason": completion.finish_reason,
        "prompt": result.prompt,
        "notice": result.notice,
    }
    if request["fewshot"] is not None:
        answer["demos"] = result.demos
    print(json.dumps(answer, ensure_ascii=False))
    return 0


def attach_adapter(generator, adapter: str) -> str:
    """Load the adapter named on the command line into the generator's model; return its name."""
    if adapter == "base":
        return adapter
    from adapters.host import attach_for_cli

    return attach_for_cli(generator.loaded, adapter, generator.lock)


def run(argv: list[str] | None = None) -> int:
    return main(build_parser().parse_args(argv))
