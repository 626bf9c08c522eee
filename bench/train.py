"""LoRA training throughput of the default model on CPU: a plain peft + torch loop.

    python -m bench train                       # r=16 on all linear layers, batch 4 x 128 tokens
    python -m bench train --steps 3 --json

Two loops run step by step in alternation on the same random token batches: fp32 weights, and
the same weights under bf16 autocast (what AMX-capable CPUs speed up). Reported: trained tokens/s
(median step) of each and their ratio. No data set and no output: this measures the loop only;
`adapters.train` is the product's training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def lora_model(dtype: str):
    """The default model wrapped by peft LoRA r=16 on every linear layer of the blocks, in train mode."""
    from peft import LoraConfig, get_peft_model

    from bot.models import load_model

    model = load_model("default", dtype=dtype).model
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(model, config).train()


def step_seconds(model, optimizer, batch, autocast: bool) -> float:
    """Time one forward, backward and AdamW step."""
    import torch

    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per loop (after one warm-up step)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    import torch

    loops = {"fp32": False, "bf16 autocast": True}
    models = {name: lora_model("float32") for name in loops}
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for name, m in models.items()}
    vocab = models["fp32"].config.vocab_size
    batches = torch.randint(0, vocab, (args.steps + 1, args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    times = {name: [] for name in loops}
    for index, batch in enumerate(batches):
        for name, autocast in loops.items():
            seconds = step_seconds(models[name], optimizers[name], batch, autocast)
            if index:  # the first step warms caches and allocations
                times[name].append(seconds)
    tokens = args.batch * args.seq
    rates = {name: tokens / statistics.median(t) for name, t in times.items()}
    result = {"tok_s": rates, "ratio_bf16_vs_fp32": rates["bf16 autocast"] / rates["fp32"],
              "batch": args.batch, "seq": args.seq, "steps": args.steps, "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"LoRA r=16 all linear, default model, CPU {result['threads']} threads, batch {args.batch} x {args.seq}")
    for name, rate in rates.items():
        print(f"{name:14} {rate:8.0f} tok/s  ({rate / rates['fp32']:.2f}x fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
