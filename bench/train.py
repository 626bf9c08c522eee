"""LoRA training throughput of the default model on CPU: the plain peft + torch loop, and the
trainer's speed-ups (`adapters/speed.py`) on it.

    python -m bench train                       # r=16 on all linear layers, batch 4 x 128 tokens
    python -m bench train --steps 3 --json
    python -m bench train --variants fp32 bf16 bf16_compiled bf16_trainer     # compiling: ~25 s each

Every variant trains its own copy of the same LoRA model, step by step in alternation, on the same
random token batches: fp32 weights, or the same weights under bf16 autocast (what AMX-capable
CPUs speed up, and what `adapters.train --precision auto` picks on them); with the model's own
loss, or the trainer's chunked loss (or its earlier version, which computed each chunk's logits
twice); eager, or with compiled decoder blocks; with no LoRA dropout (peft's default and the
trainer's), or 0.05 on each adapted layer's input (`*_dropout`). Reported: trained
tokens/s (median step) of each, and its ratio to the plain loop in the same precision. No data set
and no output: this measures the loop only; `adapters.train` is the product's training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from dataclasses import replace

from bench.train_gpu import Variant, train_step

LOOPS = {  # the GPU bench's knobs (bench/train_gpu.py), as they apply to the CPU
    "": Variant(),
    "chunked": Variant(chunked_ce=True),
    "recompute": Variant(chunked_ce=True, recompute=True),
    "compiled": Variant(compile=True),
    "trainer": Variant(chunked_ce=True, compile=True),
    "dropout": Variant(dropout=0.05),
}
VARIANTS = {  # each loop in fp32 and under bf16 autocast: fp32, bf16, fp32_chunked, bf16_chunked, ...
    "_".join(filter(None, (precision, loop))): replace(knobs, autocast=precision == "bf16")
    for loop, knobs in LOOPS.items() for precision in ("fp32", "bf16")
}
DEFAULT_VARIANTS = ["fp32", "bf16", "fp32_chunked", "bf16_chunked", "fp32_recompute", "bf16_recompute"]
WARMUP = 2
"""Untimed steps first: caches, allocations and, for compiled blocks, compiling."""


def lora_model(variant: Variant):
    """The default model in fp32, wrapped by peft LoRA r=16 on every linear layer of the blocks,
    in train mode, set up as `variant` says."""
    from peft import LoraConfig, get_peft_model

    from adapters.speed import compile_blocks
    from bot.models import load_model

    model = load_model("default", dtype="float32").model
    model.config.use_cache = False  # as the trainer trains: no KV cache built in each forward pass
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=variant.dropout, target_modules="all-linear")
    model = get_peft_model(model, config).train()
    if variant.compile:
        compile_blocks(model)
    return model


def baseline(variant: Variant) -> str:
    """The plain loop in the same precision, which `variant`'s ratio is against."""
    return "bf16" if variant.autocast else "fp32"


def step_seconds(model, optimizer, tokens, variant: Variant) -> float:
    """Time one forward, backward and AdamW step on `tokens` (every position labelled)."""
    import torch

    batch = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens), "labels": tokens}
    start = time.perf_counter()
    train_step(model, batch, optimizer, variant)
    return time.perf_counter() - start


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=8, help=f"timed steps per variant (after {WARMUP} warm-up steps)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=DEFAULT_VARIANTS,
                        help="which loops to run; a variant's plain loop in its precision is added for its ratio")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    import torch

    names = list(dict.fromkeys([*(baseline(VARIANTS[name]) for name in args.variants), *args.variants]))
    models = {name: lora_model(VARIANTS[name]) for name in names}
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for name, m in models.items()}
    vocab = models[names[0]].config.vocab_size
    generator = torch.Generator().manual_seed(0)
    batches = torch.randint(0, vocab, (WARMUP + args.steps, args.batch, args.seq), generator=generator)
    times = {name: [] for name in names}
    for index, batch in enumerate(batches):
        for name in names:
            seconds = step_seconds(models[name], optimizers[name], batch, VARIANTS[name])
            if index >= WARMUP:
                times[name].append(seconds)
    tokens = args.batch * args.seq
    rates = {name: tokens / statistics.median(t) for name, t in times.items()}
    ratios = {name: rates[name] / rates[baseline(VARIANTS[name])] for name in names}
    result = {"tok_s": rates, "ratio_vs_plain": ratios, "batch": args.batch, "seq": args.seq,
              "steps": args.steps, "threads": torch.get_num_threads()}
    if "fp32" in rates and "bf16" in rates:
        result["ratio_bf16_vs_fp32"] = rates["bf16"] / rates["fp32"]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"LoRA r=16 all linear, default model, CPU {result['threads']} threads, batch {args.batch} x {args.seq}")
    for name in names:
        print(f"{name:14} {rates[name]:8.0f} tok/s  ({ratios[name]:.2f}x {baseline(VARIANTS[name])})")
    if "ratio_bf16_vs_fp32" in result:
        print(f"bf16 autocast / fp32: {result['ratio_bf16_vs_fp32']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
