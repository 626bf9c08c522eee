"""First-step gradients of the GPU bench's variants against fp32: rounding, or a real difference?

    python -m bench grad_check                  # Qwen2.5-1.5B shape on a CUDA GPU, batch 2 x 1024
    python -m bench grad_check --tiny           # tiny shapes, on the CPU unless CUDA is present

The stock loop and the fast variants (`trainer`: compiled blocks, the chunked loss, bf16 autocast)
train bf16 models, so their gradients differ by rounding, and 20 steps at a high learning rate
let such differences grow (BENCHMARKS.md). This tells rounding from a real difference: each
variant's LoRA gradients for one batch of padded documents, from the same weights, are compared
with those of the same model in fp32 with the model's own loss. Each variant's error is then set
against the plain loop's in the same precision: `autocast` for the variants under bf16 autocast
(which also multiplies LoRA's fp32 weights in bf16), `stock` for the others. Within `TOLERANCE`
times that, the verdict is "rounding"; above it, "differs": more error than the precision
explains. Nothing is trained.

peft starts every LoRA B matrix at zero, which would make every A gradient zero; B is set to
small random values first, the same in every variant, so that A is checked too.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.train_gpu import (QWEN_SHAPES, VARIANTS, Run, Variant, build_model, device_for, make_batches, release,
                             variant_loss)

TOLERANCE = 2.0
"""A variant's error may be this many times its plain loop's and still count as rounding."""
DEFAULT_VARIANTS = ["stock", "autocast", "chunked_ce", "compile_autocast", "trainer"]


def baseline(name: str) -> str:
    """The plain loop in `name`'s precision, whose error `name`'s is set against."""
    return "autocast" if VARIANTS[name].autocast else "stock"


def lora_gradients(shape: str, variant: Variant, run: Run, batch: dict, fp32: bool = False) -> dict:
    """The LoRA gradients (fp32, on the CPU) of one batch, for a fresh model built as `variant` says;
    the model is freed before returning."""
    import torch

    model = build_model(shape, run, variant)
    if fp32:
        model.float()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    variant_loss(model, batch, variant).backward()
    gradients = {name: p.grad.float().cpu() for name, p in model.named_parameters() if p.requires_grad}
    del model
    release(run.device)
    return gradients


def relative_error(got: dict, reference: dict) -> float:
    """|got - reference| / |reference| over all the gradients at once (Euclidean norms)."""
    import torch

    if got.keys() != reference.keys():
        raise ValueError(f"the variants adapt different layers: {sorted(got.keys() ^ reference.keys())[:4]}")
    difference = torch.cat([(got[name] - reference[name]).flatten() for name in reference])
    return (difference.norm() / torch.cat([g.flatten() for g in reference.values()]).norm()).item()


def compare(shape: str, names: list[str], run: Run):
    """Yield, variant by variant as each finishes, its relative error against fp32 and its ratio
    to its plain loop's (measured first); a variant that fails yields a note instead."""
    (batch,) = make_batches(run, QWEN_SHAPES[shape]["vocab_size"], "padded", 1)
    batch = {key: value.to(run.device) for key, value in batch.items()}
    reference = lora_gradients(shape, Variant(), run, batch, fp32=True)
    errors = {}
    plain_loops = [plain for plain in ("stock", "autocast") if any(baseline(name) == plain for name in names)]
    for name in dict.fromkeys([*plain_loops, *names]):
        try:
            errors[name] = relative_error(lora_gradients(shape, VARIANTS[name], run, batch), reference)
        except Exception as error:  # one broken variant must not cost the GPU run the others
            yield {"model": shape, "variant": name, "note": f"failed: {type(error).__name__}: {error}"}
            continue
        plain = errors.get(baseline(name))
        if name not in names:
            continue
        if plain is None:
            yield {"model": shape, "variant": name, "note": f"no verdict: its plain loop ({baseline(name)}) failed"}
            continue
        yield {"model": shape, "variant": name, "rel_error": errors[name], "baseline": baseline(name),
               "vs_baseline": errors[name] / plain,
               "verdict": "rounding" if errors[name] <= TOLERANCE * plain else "differs"}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench grad_check", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["1.5b", "7b"], default=["1.5b"])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=[  # same base, data and dropout
        name for name, v in VARIANTS.items() if not v.nf4 and not v.dropout and v.data == "full"])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, on CPU unless CUDA is present")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    parser.add_argument("--jsonl", action="store_true", help="one JSON line per variant, printed as it finishes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    device = device_for("grad_check", args.tiny)
    if device is None:
        return 2
    run = Run(batch=2, seq=64 if args.tiny else 1024, device=device)
    rows = (row for shape in (["tiny"] if args.tiny else args.models) for row in compare(shape, args.variants, run))
    if args.json:
        print(json.dumps(list(rows), indent=2))
        return 0
    if not args.jsonl:
        print(f"LoRA gradients of one batch ({run.batch} x {run.seq}, padded) against the same model in fp32")
    for row in rows:
        print(json.dumps(row) if args.jsonl else line(row), flush=True)
    return 0


def line(row: dict) -> str:
    if "note" in row:
        return f"{row['model']:5} {row['variant']:20} {row['note']}"
    return (f"{row['model']:5} {row['variant']:20} relative error {row['rel_error']:.2e}, "
            f"{row['vs_baseline']:5.2f}x {row['baseline']}'s: {row['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
