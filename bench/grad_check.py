"""First-step gradients of the GPU bench's variants against fp32: rounding, or a real difference?

    python -m bench grad_check                  # Qwen2.5-1.5B shape on a CUDA GPU, batch 2 x 1024
    python -m bench grad_check --tiny           # tiny shapes, on the CPU unless CUDA is present

The stock loop and the fast variants (`trainer`: compiled blocks, the chunked loss, bf16 autocast)
train bf16 models, so their gradients differ by rounding, and 20 steps at a high learning rate
let such differences grow (BENCHMARKS.md). This tells rounding from a real difference: each
variant's LoRA gradients for one batch of padded documents, from the same weights, are compared
with those of the same model in fp32 with the model's own loss. A variant rounds like the stock
loop when its relative error is at most `TOLERANCE` times the stock loop's; above that it
computes a different gradient. Nothing is trained.

peft starts every LoRA B matrix at zero, which would make every A gradient zero; B is set to
small random values first, the same in every variant, so that A is checked too.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.train_gpu import QWEN_SHAPES, VARIANTS, Run, Variant, build_model, device_for, make_batches, variant_loss

TOLERANCE = 2.0
"""A variant's error may be this many times the stock loop's and still count as rounding."""
DEFAULT_VARIANTS = ["stock", "autocast", "chunked_ce", "compile_autocast", "trainer"]


def lora_gradients(shape: str, variant: Variant, run: Run, batch: dict, fp32: bool = False) -> dict:
    """The LoRA gradients (fp32, on the CPU) of one batch, for a fresh model built as `variant` says."""
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
    return {name: p.grad.float().cpu() for name, p in model.named_parameters() if p.requires_grad}


def relative_error(got: dict, reference: dict) -> float:
    """|got - reference| / |reference| over all the gradients at once (Euclidean norms)."""
    import torch

    assert got.keys() == reference.keys(), "the variants adapt different layers"
    difference = torch.cat([(got[name] - reference[name]).flatten() for name in reference])
    return (difference.norm() / torch.cat([g.flatten() for g in reference.values()]).norm()).item()


def compare(shape: str, names: list[str], run: Run) -> list[dict]:
    """Each variant's relative error against fp32, and its ratio to the stock loop's."""
    (batch,) = make_batches(run, QWEN_SHAPES[shape]["vocab_size"], "padded", 1)
    batch = {key: value.to(run.device) for key, value in batch.items()}
    reference = lora_gradients(shape, Variant(), run, batch, fp32=True)
    errors = {name: relative_error(lora_gradients(shape, VARIANTS[name], run, batch), reference)
              for name in dict.fromkeys(["stock", *names])}
    return [{"model": shape, "variant": name, "rel_error": errors[name], "vs_stock": errors[name] / errors["stock"],
             "verdict": "rounding" if errors[name] <= TOLERANCE * errors["stock"] else "differs"}
            for name in names]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench grad_check", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["1.5b", "7b"], default=["1.5b"])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=[  # same base, data and dropout
        name for name, v in VARIANTS.items() if not v.nf4 and not v.dropout and v.data == "full"])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, on CPU unless CUDA is present")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    device = device_for("grad_check", args.tiny)
    if device is None:
        return 2
    run = Run(batch=2, seq=64 if args.tiny else 1024, device=device)
    results = [row for shape in (["tiny"] if args.tiny else args.models) for row in compare(shape, args.variants, run)]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"LoRA gradients of one batch ({run.batch} x {run.seq}, padded) against the same model in fp32")
    for row in results:
        print(f"{row['model']:5} {row['variant']:20} relative error {row['rel_error']:.2e}  "
              f"{row['vs_stock']:5.2f}x the stock loop's  {row['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
