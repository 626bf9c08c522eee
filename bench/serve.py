"""Concurrent requests over several LoRA adapters: the batcher and the native decoder against
one-at-a-time serving with `generate`.

    python -m bench serve                          # 8 requests, 4 adapters, 64 new tokens, 3 rounds
    python -m bench serve --requests 8 --tokens 16 --json

Four small random LoRA adapters (different seeds) are written to a temporary folder with peft and
loaded onto one PeftModel of the default model in fp32. Each round sends the same requests from
concurrent threads, first to the baseline (`Generator.complete`, which serialises requests behind
its lock), then to `bot.batching.Batcher` (mixed-adapter batches through peft's `generate`), then
to a generator with the native decoder (`bot.native`: still one request at a time, each adding its
own adapter in the C step; what the app does on a CPU); rounds alternate and the best round of each
counts. Reported: total completion tokens/s, p50/p95 request latency (submit to answer), and
whether each mode's answers equal the serial ones (they must, greedy in fp32).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

QUESTIONS = [
    "What is in-context learning?", "Give me one tip for writing few-shot prompts.",
    "What does LoRA change in a model?", "Why is the rank of a LoRA adapter small?",
    "Name two uses of a chat bot in a classroom.", "Explain overfitting in one sentence.",
    "What is a token?", "How does temperature change sampling?",
]


def make_adapters(model, folder: Path, count: int) -> list[str]:
    """Write `count` random LoRA adapters (seed i) for `model` under `folder`; returns their names."""
    import torch
    from peft import LoraConfig, get_peft_model

    names = []
    for seed in range(count):
        name = f"adapter{seed}"
        torch.manual_seed(seed)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                            init_lora_weights=False)
        peft_model = get_peft_model(model, config, adapter_name=name)
        peft_model.save_pretrained(folder)  # a named adapter lands in folder / name
        model = peft_model.unload()  # the base again, without LoRA layers
        names.append(name)
    return names


def attach(model, folder: Path, names: list[str]):
    """One PeftModel carrying every adapter, in eval mode."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, folder / names[0], adapter_name=names[0])
    for name in names[1:]:
        peft_model.load_adapter(folder / name, adapter_name=name)
    return peft_model.eval()


def fire(call, requests: list[tuple[list[dict], str]]) -> tuple[float, list[float], list]:
    """Send every request from its own thread at once; (wall seconds, latencies, completions)."""
    latencies, results = [0.0] * len(requests), [None] * len(requests)
    gate = threading.Barrier(len(requests) + 1)

    def one(index, messages, adapter):
        gate.wait()
        start = time.perf_counter()
        try:
            results[index] = call(messages, adapter)
        except BaseException as error:  # re-raised in the caller's thread below
            results[index] = error
        latencies[index] = time.perf_counter() - start

    threads = [threading.Thread(target=one, args=(i, *r)) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    gate.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise failed
    return wall, latencies, results


def summary(wall: float, latencies: list[float], completions: list) -> dict:
    tokens = sum(c.completion_tokens for c in completions)
    ordered = sorted(latencies)
    return {"tok_s": tokens / wall, "tokens": tokens, "wall_s": wall, "p50_s": statistics.median(ordered),
            "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench serve", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests per round")
    parser.add_argument("--adapters", type=int, default=4, help="random LoRA adapters, used in turn")
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each counts")
    parser.add_argument("--window", type=float, default=0.05, help="batcher collection window (seconds)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from bot.batching import Batcher
    from bot.conversation import build_messages
    from bot.generation import Generator
    from bot.models import load_model
    from bot.settings import GenerationSettings

    loaded = load_model("default", dtype="float32")
    with tempfile.TemporaryDirectory() as folder:
        names = make_adapters(loaded.model, Path(folder), args.adapters)
        native = Generator(loaded, fast_decode=True, decoder="native")  # packs the plain base model
        loaded.model = attach(loaded.model, Path(folder), names)
    generator = Generator(loaded)
    settings = GenerationSettings(max_new_tokens=args.tokens)
    requests = [(build_messages(QUESTIONS[i % len(QUESTIONS)]), names[i % len(names)]) for i in range(args.requests)]
    batcher = Batcher(generator, window_s=args.window, max_batch=args.requests)
    modes = {"serial": lambda m, a: generator.complete(m, settings, a),
             "batched": lambda m, a: batcher.complete(m, settings, a),
             "native": lambda m, a: native.complete(m, settings, a)}
    best, texts = {}, {}
    try:
        for _ in range(args.rounds):
            for mode, call in modes.items():
                wall, latencies, completions = fire(call, requests)
                result = summary(wall, latencies, completions)
                texts.setdefault(mode, [c.text for c in completions])
                if result["tok_s"] > best.get(mode, {"tok_s": 0})["tok_s"]:
                    best[mode] = result
    finally:
        batcher.close()
    report(args, best, texts)
    return 0


def report(args, best: dict, texts: dict) -> None:
    result = {**{f"{mode}_{key}": value for mode, r in best.items() for key, value in r.items()},
              "speedup": best["batched"]["tok_s"] / best["serial"]["tok_s"],
              "identical": texts["batched"] == texts["serial"],
              "native_speedup": best["native"]["tok_s"] / best["serial"]["tok_s"],
              "native_identical": texts["native"] == texts["serial"],
              "requests": args.requests, "adapters": args.adapters, "tokens": args.tokens, "rounds": args.rounds}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"default model fp32, {args.requests} concurrent requests over {args.adapters} adapters, "
          f"{args.tokens} new tokens, best of {args.rounds} rounds")
    print(f"{'mode':8} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7}")
    for mode, r in best.items():
        print(f"{mode:8} {r['tok_s']:7.1f} {r['p50_s']:7.2f} {r['p95_s']:7.2f}")
    print(f"batched / serial throughput: {result['speedup']:.2f}x; answers identical: {result['identical']}")
    print(f"native / serial throughput: {result['native_speedup']:.2f}x; answers identical: "
          f"{result['native_identical']}")


if __name__ == "__main__":
    sys.exit(main())
