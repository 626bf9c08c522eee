"""Load test: many gradio_client users chat with one app at once, and nobody gets another's answer.

    .venv/bin/python tests/stress.py                          # 16 users x 5 turns, the default model
    .venv/bin/python tests/stress.py --users 4 --turns 2      # a quicker look
    .venv/bin/python tests/stress.py --model ./tiny-folder    # any model folder, adapters made for it
    .venv/bin/python tests/stress.py --client api             # streaming clients of /v1/chat/completions

It starts `python app.py --dtype float32` on a loopback port with two LoRA adapters made for the
run (random, distinct seeds, saved the way training saves them, so the registry vets them), and a
fresh data home. Users share a few conversations that together cover every kind of request
(adapter x mode x pool); first each conversation runs alone, one request at a time, and those
greedy fp32 answers are the reference. Then all users send a warm-up round together, the
server's resident memory is measured, all users send their turns together, and memory is
measured again. It passes when no request failed, every answer and prompt equals the serial one
for its settings, and memory grew less than `max_growth`. Every request has a timeout and the
run a fixed number of requests, so it always ends. With `--client api` each user is an `openai`
client streaming from the OpenAI-compatible API (few-shot settings in `icl`, its own history)
instead of a gradio_client session; answers are compared, as the API returns no prompt. tests/test_stress.py runs a short version on a
tiny model; this module holds no pytest test itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

ADAPTERS = ("stress-a", "stress-b")
MESSAGES = ("I loved every minute of this film.", "Book me a table for two tonight.", "What is the capital of France?")
MODES = (("(none)", "few"), ("sentiment", "zero"), ("sentiment", "few"), ("intent", "few"))
"""(pool, mode) pairs: plain chat, zero-shot and few-shot on the built-in pools."""
SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class Kind:
    """One kind of request: everything that decides its greedy answer."""

    adapter: str
    pool: str
    mode: str
    message: str

    def arguments(self, max_new_tokens: int) -> tuple:
        """The /chat endpoint's arguments (README: message, system, tokens, temperature, top_p, adapter,
        pool, mode, k, select, order); temperature 0 is greedy."""
        sampling = (max_new_tokens, 0, 1)
        return (self.message, SYSTEM, *sampling, self.adapter, self.pool, self.mode, 3, "knn", "nearest-last")


def request_kinds() -> list[Kind]:
    """Base and every adapter, each with every (pool, mode), messages taken in turn."""
    kinds = []
    for adapter in ("base", *ADAPTERS):
        for pool, mode in MODES:
            kinds.append(Kind(adapter, pool, mode, MESSAGES[len(kinds) % len(MESSAGES)]))
    return kinds


@dataclass
class Report:
    users: int
    turns: int
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    crossed: list[str] = field(default_factory=list)
    """Answers that differ from the serial answer for their settings."""
    rss_after_warmup: int = 0
    """Resident memory of the server process (bytes)."""
    rss_at_end: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def growth(self) -> float:
        return self.rss_at_end / self.rss_after_warmup - 1

    def problems(self, max_growth: float) -> list[str]:
        found = self.errors + self.crossed
        if self.growth >= max_growth:
            found.append(f"server memory grew {self.growth:.1%} after warm-up (limit {max_growth:.0%})")
        return found


def save_random_adapters(model_spec: str, folder: Path, names=ADAPTERS, rank: int = 4, seed: int = 1000) -> list[Path]:
    """LoRA adapters with random (non-zero) weights for `model_spec`, one seed each, written like a
    trained adapter (PEFT files, metadata with checksums, atomic publish) so the registry vets them."""
    import torch
    from peft import LoraConfig, get_peft_model

    from adapters.lora import save_weights
    from adapters.metadata import AdapterMetadata, file_checksums, weights_fingerprint
    from adapters.publish import publish
    from bot.models import load_model

    loaded = load_model(model_spec, dtype="float32", device="cpu")
    fingerprint = weights_fingerprint(loaded.model)
    written = []
    for offset, name in enumerate(names):
        torch.manual_seed(seed + offset)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False,
                            task_type="CAUSAL_LM")
        peft_model = get_peft_model(loaded.model, config)
        peft_model.peft_config["default"].base_model_name_or_path = loaded.name

        def write(staging: Path) -> None:
            save_weights(peft_model, staging)
            AdapterMetadata(base_model=loaded.name, base_fingerprint=fingerprint, checksums=file_checksums(staging),
                            chat_template=loaded.tokenizer.chat_template, data_file="(random weights, tests/stress.py)",
                            config={"rank": rank, "seed": seed + offset}).write(staging)

        written.append(publish(Path(folder) / name, write))
        loaded.model = peft_model.unload()  # the plain base again, for the next adapter
    return written


def server_process(url: str):
    """The `python app.py` child serving `url` (servers.running_app starts it)."""
    import psutil

    port = url.rstrip("/").rsplit(":", 1)[1]
    for child in psutil.Process().children():
        if "app.py" in " ".join(child.cmdline()) and port in child.cmdline():
            return child
    raise RuntimeError(f"no app.py child process serves {url}")


def ask(url: str, kinds: list[Kind], max_new_tokens: int, timeout: float) -> list[tuple[str, str]]:
    """One user's conversation: its turns in order through its own client, [(answer, prompt)].

    A gradio_client Client is one session, and the chat keeps a session's history, so later
    plain-chat turns see the earlier ones (few-shot turns answer each message on its own).
    """
    from gradio_client import Client

    client = Client(url, verbose=False, httpx_kwargs={"timeout": timeout})  # its default, 5 s, is short under load
    answers = []
    for kind in kinds:
        job = client.submit(*kind.arguments(max_new_tokens), api_name="/chat")
        answer, _, prompt = job.result(timeout=timeout)
        answers.append((answer, prompt))
    return answers


def ask_api(url: str, kinds: list[Kind], max_new_tokens: int, timeout: float) -> list[tuple[str, str]]:
    """One user's conversation as an `openai` client streaming each answer; [(answer, "")]."""
    import openai

    client = openai.OpenAI(base_url=f"{url.rstrip('/')}/v1", api_key="unused", max_retries=0, timeout=timeout)
    history, answers = [], []
    for kind in kinds:
        messages = [{"role": "system", "content": SYSTEM}, *history, {"role": "user", "content": kind.message}]
        icl = {"pool": kind.pool, "mode": kind.mode, "k": 3, "select": "knn", "order": "nearest-last"}
        stream = client.chat.completions.create(
            model=kind.adapter, messages=messages, max_tokens=max_new_tokens, temperature=0, stream=True,
            extra_body={} if kind.pool == "(none)" else {"icl": icl},
        )
        answer = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        history += [{"role": "user", "content": kind.message}, {"role": "assistant", "content": answer}]
        answers.append((answer, ""))
    return answers


ASKERS = {"ui": ask, "api": ask_api}


def conversations(turns: int) -> list[tuple[Kind, ...]]:
    """As few conversations of `turns` turns as cover every kind of request; users share them."""
    kinds = request_kinds()
    count = -(-len(kinds) // turns)
    return [tuple(kinds[(number * turns + turn) % len(kinds)] for turn in range(turns)) for number in range(count)]


def crowd(url: str, plans: list[tuple[Kind, ...]], reference: dict, report: Report, max_new_tokens: int,
          timeout: float, asker=ask) -> None:
    """Every plan (one user's conversation) at once; failures and crossed answers go into the report."""
    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        futures = [pool.submit(asker, url, list(plan), max_new_tokens, timeout) for plan in plans]
        for user, (plan, future) in enumerate(zip(plans, futures)):
            report.requests += len(plan)
            try:
                answers = future.result(timeout=timeout * len(plan) + 60)
            except Exception as error:  # any failure is a finding; keep the others' results
                report.errors.append(f"user {user}: {type(error).__name__}: {error}")
                continue
            for turn, (kind, got, alone) in enumerate(zip(plan, answers, reference[plan])):
                if got != alone:
                    report.crossed.append(f"user {user} turn {turn} {kind}: got {got[0]!r}, alone {alone[0]!r}"
                                          f"{whose(got, reference)}")


def whose(got: tuple[str, str], reference: dict) -> str:
    """Which other request's answer (and prompt) a wrong answer is, to tell crossing from drift."""
    turns = [(plan[:turn + 1], result) for plan, results in reference.items() for turn, result in enumerate(results)]
    same_answer = [path[-1] for path, (answer, _) in turns if answer == got[0]]
    same_prompt = [path[-1] for path, (_, prompt) in turns if prompt == got[1]]
    return f"; that answer belongs to {same_answer or 'no request'}, the prompt to {same_prompt or 'no request'}"


def run(model_spec: str, adapters_dir: Path, home: Path, users: int, turns: int, max_new_tokens: int = 16,
        timeout: float = 300, client: str = "ui") -> Report:
    """Serve `model_spec` with the adapters in `adapters_dir` and run the whole load test.

    `client`: `ui` (gradio_client sessions of the chat) or `api` (openai streaming clients)."""
    asker = ASKERS[client]
    from servers import running_app

    shared = conversations(turns)
    plans = [shared[user % len(shared)] for user in range(users)]
    warmup = [plan[:1] for plan in reversed(plans)]
    report = Report(users=users, turns=turns)
    env = {"ICL_BOT_ADAPTERS": str(adapters_dir), "ICL_BOT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    with running_app("--model", model_spec, "--dtype", "float32", env=env, timeout=300) as url:
        server = server_process(url)
        started = time.perf_counter()
        reference = {plan: asker(url, list(plan), max_new_tokens, timeout) for plan in shared}
        reference.update({plan[:1]: answers[:1] for plan, answers in list(reference.items())})
        report.seconds["serial"] = time.perf_counter() - started
        plain = {asker(url, [Kind(name, "(none)", "few", MESSAGES[0])], max_new_tokens, timeout)[0][0]
                 for name in ("base", *ADAPTERS)}
        if len(plain) < 1 + len(ADAPTERS):
            report.errors.append(f"sanity check: base and adapters should answer plain chat differently, got {plain}")
        for name, round_plans in (("warmup", warmup), ("concurrent", plans)):
            started = time.perf_counter()
            crowd(url, round_plans, reference, report, max_new_tokens, timeout, asker)
            report.seconds[name] = time.perf_counter() - started
            if name == "warmup":
                report.rss_after_warmup = server.memory_info().rss
        report.rss_at_end = server.memory_info().rss
    return report


def main(args: argparse.Namespace) -> int:
    from bot.paths import model_cache_dir

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ICL_BOT_MODEL_CACHE", str(model_cache_dir()))  # reuse the converted default model
    with tempfile.TemporaryDirectory(prefix="icl-bot-stress-") as scratch:
        adapters_dir = Path(scratch) / "adapters"
        save_random_adapters(args.model, adapters_dir)
        report = run(args.model, adapters_dir, Path(scratch) / "home", args.users, args.turns, args.max_new_tokens,
                     client=args.client)
    problems = report.problems(args.max_growth)
    summary = {"requests": report.requests, "errors": len(report.errors), "crossed": len(report.crossed),
               "rss_after_warmup_mb": round(report.rss_after_warmup / 2**20, 1),
               "rss_at_end_mb": round(report.rss_at_end / 2**20, 1), "growth": round(report.growth, 4),
               "seconds": {k: round(v, 1) for k, v in report.seconds.items()}}
    print(json.dumps(summary, indent=2))
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Many concurrent chat users against one app; see the docstring.")
    parser.add_argument("--model", default="default", help="model spec the app serves (adapters are made for it)")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--client", choices=list(ASKERS), default="ui",
                        help="ui: gradio_client chat sessions; api: openai streaming clients of /v1")
    parser.add_argument("--max-growth", type=float, default=0.15, help="allowed RSS growth after warm-up (0.15 = 15%%)")
    return parser


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
