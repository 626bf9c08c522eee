"""Decode speed and time to first token of the default model on CPU, batch 1, against llama.cpp.

    python -m bench decode                       # 128 new tokens, 3 interleaved rounds (~5 min)
    python -m bench decode --tokens 32 --json    # JSON on stdout
    python -m bench decode --steps generate loop --tokens 4    # a quick subset
    python -m bench decode --steps fp32 native                 # the app's fast path against generate

Each step of the table adds one optimisation to the one before (see `STEPS`) and is checked
against plain `generate` on the same weights: greedy tokens must be identical. Decode rate is
(tokens - 1) / (time after the first token), so prefill is excluded; time to first token is
measured separately on a 4-shot prompt of about 400 tokens. Every engine runs once per round,
rounds alternate, and each engine's best round counts, so the other loads on a shared machine
hurt all engines alike. The memory-bandwidth floor is the weight bytes one token reads over the
read bandwidth measured in this run. llama.cpp (the optional `llama-cpp-python`, not a
requirement of the product) reads the same GGUF file with the same thread count.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass

CHAT = [{"role": "user", "content": "Explain in-context learning and LoRA to a new student, step by step."}]
SHOT_REVIEWS = [
    ("The film opens with a long, quiet shot of a harbour at dawn, and from there it never stops surprising. "
     "The two leads argue, reconcile and argue again, and every scene feels earned. The photography makes "
     "a grey fishing town look like the most beautiful place on earth, and the last scene is perfect.", "positive"),
    ("I wanted to like this one: the cast is strong and the score is lovely. But the plot wanders for two hours, "
     "the jokes land flat, and the ending simply stops rather than concludes. Several subplots are "
     "introduced and forgotten, and by the final act I had stopped caring who ended up with whom.", "negative"),
    ("A small, warm story about a baker and her estranged brother. Nothing explodes, nobody is chased, "
     "and yet I was gripped from the first loaf to the last; I laughed and cried in the same scene. "
     "The dialogue sounds like real people talking, and the two actors have wonderful chemistry.", "positive"),
    ("The effects are expensive and the trailer promised a thrill ride, yet the film is a chore: "
     "characters explain the plot to each other, the villain has no motive, and it drags. Even the "
     "action scenes are edited so fast that you cannot tell who is fighting whom, or why it matters.", "negative"),
]
QUERY = ("Slow to start, but the last hour is among the best cinema I have seen this year; the director trusts "
         "the audience, the actors disappear into their roles, and the final image stayed with me for days. "
         "Bring patience for the first forty minutes; it is repaid many times over by what follows them.")


@dataclass(frozen=True)
class Step:
    name: str
    dtype: str
    runner: str
    """`generate`, `generate-static` (generate with a static cache), `loop` (bot.fastdecode) or
    `native` (bot.native: one C call per token, weights kept as the GGUF's Q4_1 and Q8_0 values),
    `native-lora` / `generate-lora` (the same two with a random LoRA adapter, r=16 on all linear layers),
    `native-bf16` (native on the weights rounded to bfloat16: the format of the hub's checkpoint)."""
    compile: bool = False
    quantization: str = "none"


STEPS = [
    Step("generate", "bfloat16", "generate"),
    Step("+ static cache", "bfloat16", "generate-static"),
    Step("+ own decode loop", "bfloat16", "loop"),
    Step("+ compile", "bfloat16", "loop", compile=True),
    Step("+ int8 weights", "bfloat16", "loop", compile=True, quantization="int8"),
    Step("generate fp32", "float32", "generate"),
    Step("loop+compile int4-exact fp32", "float32", "loop", compile=True, quantization="int4-exact"),
    Step("own loop fp32", "float32", "loop"),
    Step("loop+compile fp32", "float32", "loop", compile=True),
    Step("loop+compile int8 fp32", "float32", "loop", compile=True, quantization="int8"),
    Step("native C step fp32", "float32", "native"),
    Step("native + LoRA r=16 fp32", "float32", "native-lora"),
    Step("generate + LoRA r=16 fp32", "float32", "generate-lora"),
    Step("native, bf16 weights fp32", "float32", "native-bf16"),
]
STEP_KEYS = {"generate": 0, "static": 1, "loop": 2, "compile": 3, "int8": 4, "fp32": 5, "int4": 6, "fp32-loop": 7,
             "fp32-compile": 8, "fp32-int8": 9, "native": 10,
             "native-lora": 11, "generate-lora": 12, "native-bf16": 13}


@dataclass
class Timing:
    name: str
    tok_s: float = 0.0
    ttft_s: float = float("inf")
    floor_tok_s: float | None = None
    identical: bool | None = None
    """Greedy tokens equal plain `generate` on the same weights; None where there is no reference."""


def chat_ids(tokenizer, messages: list[dict]):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]


def fewshot_messages() -> list[dict]:
    """A 4-shot sentiment prompt (about 400 tokens with SmolLM2's template)."""
    messages = [{"role": "system", "content": "Label each movie review as positive or negative. Answer with one word."}]
    for review, label in SHOT_REVIEWS:
        messages += [{"role": "user", "content": review}, {"role": "assistant", "content": label}]
    return messages + [{"role": "user", "content": QUERY}]


class GenerateEngine:
    """Plain `model.generate`, greedy, no end-of-turn stop; rate from an n-token and a 1-token call."""

    def __init__(self, model, static: bool):
        self.model = model
        self.extra = {"cache_implementation": "static", "disable_compile": True} if static else {}

    def _generate(self, ids, tokens: int):
        from transformers import GenerationConfig

        config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0, max_new_tokens=tokens, **self.extra)
        return self.model.generate(ids, generation_config=config)

    def run(self, ids, tokens: int):
        import torch

        with torch.inference_mode():
            start = time.perf_counter()
            self._generate(ids, 1)
            first = time.perf_counter() - start
            start = time.perf_counter()
            out = self._generate(ids, tokens)
            total = time.perf_counter() - start
        return first, total - first, out[0, ids.shape[1]:].tolist()


class LoopEngine:
    """A decoder with `tokens()` (`FastDecoder`, `NativeDecoder`): first token timed apart from the rest."""

    def __init__(self, decoder, **options):
        self.decoder = decoder
        self.options = options
        """`adapter` and `model` for a native decoder serving a LoRA adapter."""

    def run(self, ids, tokens: int):
        start = time.perf_counter()
        produced, first = [], 0.0
        for token in self.decoder.tokens(ids, tokens, eos_ids=set(), **self.options):
            if not produced:
                first = time.perf_counter() - start
            produced.append(token)
        return first, time.perf_counter() - start - first, produced


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python on the GGUF file, greedy (top_k=1)."""

    def __init__(self, gguf_path: str, threads: int, max_len: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=gguf_path, n_threads=threads, n_threads_batch=threads, n_ctx=max_len,
                         verbose=False)

    def run(self, ids, tokens: int):
        prompt = ids[0].tolist()  # the same token ids as ours: both vocabularies come from the GGUF
        start = time.perf_counter()
        produced, first = [], 0.0
        for token in self.llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            if not produced:
                first = time.perf_counter() - start
            produced.append(token)
            if len(produced) == tokens:
                break
        return first, time.perf_counter() - start - first, produced


def read_bandwidth(mib: int = 512, rounds: int = 5) -> float:
    """Best-of memory read bandwidth (bytes/s) of a sum over a buffer much larger than the caches."""
    import torch

    buffer = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best


def weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: the blocks, the final norm and the output head."""
    tensors = {}
    for part in (model.model.layers, model.model.norm, model.lm_head):
        for tensor in [*part.parameters(), *part.buffers()]:
            tensors[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(tensors.values())


def build_engines(steps: list[Step], max_len: int) -> tuple[dict, dict]:
    """Timed engines (name -> (engine, weight bytes)) and, per step, the plain `generate` on its weights."""
    from bot.fastdecode import FastDecoder, quantize, round_to_int8
    from bot.models import load_model
    from bot.native import NativeDecoder

    loaded = {dtype: load_model("default", dtype=dtype).model for dtype in sorted({s.dtype for s in steps})}
    plain = {dtype: GenerateEngine(model, static=False) for dtype, model in loaded.items()}
    engines, references = {}, {}
    for step in steps:
        model, references[step.name] = loaded[step.dtype], plain[step.dtype]
        if step.quantization == "int8":
            model = copy.deepcopy(model)
            round_to_int8(model)
            references[step.name] = GenerateEngine(model, static=False)
        if step.runner.endswith("-lora"):
            engines[step.name], references[step.name] = lora_engines(model, step.runner, max_len)
            continue
        if step.runner == "native-bf16":
            engines[step.name], references[step.name] = bf16_engines(model, max_len)
            continue
        model = quantize(model, step.quantization)
        if step.runner == "native":
            decoder = NativeDecoder(model, max_len=max_len)
            engines[step.name] = (LoopEngine(decoder), decoder.weight_bytes)
            continue
        if step.runner == "loop":
            engine = LoopEngine(FastDecoder(model, max_len=max_len, compile=step.compile))
        else:
            engine = GenerateEngine(model, static=step.runner == "generate-static")
        engines[step.name] = (engine, weight_bytes(model))
    return engines, references


def lora_engines(model, runner: str, max_len: int):
    """(timed engine, weight bytes) and the reference (peft `generate`) for a random LoRA adapter
    (r=16, all linear layers) on a copy of `model`."""
    import torch
    from peft import LoraConfig, get_peft_model

    from bot.native import NativeDecoder

    model = copy.deepcopy(model)
    decoder = NativeDecoder(model, max_len=max_len) if runner == "native-lora" else None
    torch.manual_seed(0)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config, adapter_name="bench").eval()
    with torch.no_grad():  # a trained adapter's size of update, not a random one that drowns the base
        for module in peft_model.modules():
            if "bench" in getattr(module, "lora_B", {}):
                module.lora_B["bench"].weight.mul_(0.05)
    reference = GenerateEngine(peft_model, static=False)
    if decoder is None:
        return (reference, weight_bytes(model)), reference
    return (LoopEngine(decoder, adapter="bench", model=peft_model), decoder.weight_bytes), reference


def bf16_engines(model, max_len: int):
    """(native engine, weight bytes) and the reference (`generate`) on a copy of `model` whose
    weights are rounded to bfloat16 values, as a bf16 checkpoint loaded in fp32 has them."""
    import torch

    from bot.native import NativeDecoder

    model = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.bfloat16().float())
    decoder = NativeDecoder(model, max_len=max_len)
    return (LoopEngine(decoder), decoder.weight_bytes), GenerateEngine(model, static=False)


def measure(engines: dict, ids_chat, ids_shots, tokens: int, rounds: int) -> dict:
    """name -> (best decode tok/s, best time to first token, tokens) over interleaved rounds."""
    best = {name: (0.0, float("inf"), None) for name in engines}
    for _ in range(rounds):
        for name, (engine, _) in engines.items():
            _, rest, produced = engine.run(ids_chat, tokens)
            ttft, _, _ = engine.run(ids_shots, 1)
            rate, first, _ = best[name]
            best[name] = (max(rate, (len(produced) - 1) / rest), min(first, ttft), produced)
    return best


def warm(engines: dict, ids, tokens: int) -> None:
    """One untimed run each: compilation, allocation and caches happen here."""
    for engine, _ in engines.values():
        engine.run(ids, min(tokens, 8))


def summarise(steps, engines, references, measured, ids, tokens, bandwidth) -> list[Timing]:
    """One row per step; `identical` compares its tokens with plain generate on the same weights."""
    reference_tokens = {}
    for engine in references.values():
        if id(engine) not in reference_tokens:
            reference_tokens[id(engine)] = engine.run(ids, tokens)[2]
    timings = []
    for step in steps:
        rate, ttft, produced = measured[step.name]
        reference = references[step.name]
        same = None if engines[step.name][0] is reference else produced == reference_tokens[id(reference)]
        timings.append(Timing(name=step.name, tok_s=rate, ttft_s=ttft,
                              floor_tok_s=bandwidth / engines[step.name][1], identical=same))
    return timings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench decode", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per decode (default 128)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds; the best counts")
    parser.add_argument("--steps", nargs="+", choices=list(STEP_KEYS), help="a subset of the table's steps")
    parser.add_argument("--no-llamacpp", action="store_true", help="skip llama.cpp even when it is installed")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.tokens < 2:
        print("python -m bench decode: error: --tokens must be at least 2", file=sys.stderr)
        return 2
    import importlib.util

    import torch

    from bot.models import load_model, packaged_gguf

    steps = [STEPS[STEP_KEYS[key]] for key in args.steps] if args.steps else STEPS
    tokenizer = load_model("default", dtype="bfloat16").tokenizer
    ids_chat, ids_shots = chat_ids(tokenizer, CHAT), chat_ids(tokenizer, fewshot_messages())
    max_len = max(ids_chat.shape[1] + args.tokens, ids_shots.shape[1] + 1) + 8
    engines, references = build_engines(steps, max_len)
    gguf = packaged_gguf()
    llamacpp = gguf is not None and importlib.util.find_spec("llama_cpp") is not None and not args.no_llamacpp
    if llamacpp:
        engines["llama.cpp"] = (LlamaCppEngine(str(gguf), torch.get_num_threads(), max_len), gguf.stat().st_size)
    warm(engines, ids_chat, args.tokens)
    bandwidth = read_bandwidth()
    measured = measure(engines, ids_chat, ids_shots, args.tokens, args.rounds)
    timings = summarise(steps, engines, references, measured, ids_chat, args.tokens, bandwidth)
    report(args, timings, engines, measured, bandwidth, llamacpp, ids_shots.shape[1])
    return 0


def report(args, timings, engines, measured, bandwidth, llamacpp, shot_tokens) -> None:
    import torch

    exact = [t for t in timings if t.identical is not False]
    best = max(exact, key=lambda t: t.tok_s)
    theirs = measured["llama.cpp"][0] if llamacpp else None
    result = {
        "ours_tok_s": best.tok_s, "ours_step": best.name, "floor_tok_s": best.floor_tok_s,
        "llamacpp_tok_s": theirs, "ratio_vs_llamacpp": best.tok_s / theirs if theirs else None,
        "ours_ttft_s": min(t.ttft_s for t in exact), "llamacpp_ttft_s": measured["llama.cpp"][1] if llamacpp else None,
        "fewshot_prompt_tokens": shot_tokens, "bandwidth_gb_s": bandwidth / 1e9, "threads": torch.get_num_threads(),
        "tokens": args.tokens, "rounds": args.rounds, "steps": [asdict(t) for t in timings],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    base = timings[0].tok_s
    print(f"default model, CPU, {result['threads']} threads, {args.tokens} new tokens, best of {args.rounds} rounds, "
          f"read bandwidth {result['bandwidth_gb_s']:.1f} GB/s")
    print(f"{'step':30} {'tok/s':>7} {'x first':>7} {'floor':>7} {'TTFT ms':>8}  same tokens as generate")
    for t in timings:
        same = {True: "yes", False: "NO", None: "(reference)"}[t.identical]
        print(f"{t.name:30} {t.tok_s:7.1f} {t.tok_s / base:7.2f} {t.floor_tok_s:7.0f} {1000 * t.ttft_s:8.0f}  {same}")
    if llamacpp:
        print(f"{'llama.cpp (same GGUF)':30} {theirs:7.1f} {theirs / base:7.2f} {bandwidth / engines['llama.cpp'][1]:7.0f} "
              f"{1000 * result['llamacpp_ttft_s']:8.0f}")
        print(f"ours ({best.name}) / llama.cpp: {result['ratio_vs_llamacpp']:.2f}")
    else:
        print("llama.cpp: not measured (pip install llama-cpp-python to compare)")
    print(f"time to first token on the {shot_tokens}-token 4-shot prompt: see TTFT")


if __name__ == "__main__":
    sys.exit(main())
