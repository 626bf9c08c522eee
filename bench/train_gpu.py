"""LoRA training throughput on a GPU: the stock peft + transformers loop against improved variants.

    python -m bench train_gpu                                  # Qwen2.5-1.5B and -7B shapes, every variant
    python -m bench train_gpu --models 1.5b --variants stock compile --json
    python -m bench train_gpu --models 7b --jsonl                # a JSON line per variant as it finishes
    python -m bench train_gpu --models 7b --variants trainer --profile   # and where a step's time goes
    python -m bench train_gpu --tiny                           # tiny shapes on CPU: checks the script runs

Models are built from Qwen2.5's public config values with random bf16 weights (nothing is
downloaded); throughput does not depend on the weights' values. Every variant trains LoRA r=16 on
all linear layers of the blocks, batch 8 x 1024 tokens, SDPA attention, AdamW, and reports tokens/s
(real tokens, pads excluded), peak memory and MFU (model FLOPs per token: 4 x frozen params for the
forward and the activation gradients, 6 x LoRA params, 12 x layers x hidden x seq for attention).

Variants (`VARIANTS` below; each is a set of the knobs of `Variant`):
- stock: `model(input_ids, labels=labels).loss`, which materialises (batch, seq, vocab) logits in fp32;
- compile: each decoder block compiled with `torch.compile` (regional compilation);
- chunked_ce: the trainer's loss over 1024-token chunks (`adapters.speed.chunked_loss`), so
  full-vocabulary fp32 logits never exist at once; each chunk's gradients are computed in the
  forward pass while its logits are at hand;
- chunked_ce_recompute, trainer_recompute: the same with each chunk's logits recomputed in the
  backward pass instead (checkpointing, the trainer's way before 2026-11-27): what computing the
  gradients in the forward pass saves;
- compile_chunked_ce: both (from the trainer's own module, `adapters/speed.py`);
- trainer: both under bf16 autocast, as `adapters.train` runs on a CUDA GPU by default (its
  Accelerator's bf16 mixed precision autocasts the forward pass, so LoRA's fp32 weights multiply
  in bf16 too);
- trainer_dropout: the trainer with LoRA dropout 0.05 (every other variant has none, as peft's
  default): what dropout on each adapted layer's input costs;
- trainer_autotune: the trainer with its blocks compiled in mode "max-autotune-no-cudagraphs", which
  times Triton matrix-product templates against cuBLAS for each shape (a long compile);
- autocast: the stock loop under bf16 autocast: the trainer before it chunked or compiled;
- compile_autocast: compiled blocks under autocast, the loss not chunked (what chunking costs);
- checkpointing: activation checkpointing on every block (less memory, more compute);
- padded / packed: documents of random lengths (64..seq) one per row with pads, or concatenated
  into full rows; their ratio is what packing buys;
- qlora_stock: the usual QLoRA recipe: NF4 block weights with double quantization, then peft's
  `prepare_model_for_kbit_training` (every non-4-bit weight upcast to fp32, activation
  checkpointing on), the stock loss, under bf16 autocast (as the HF Trainer runs it with bf16=True);
- qlora_chunked: NF4 as above, the other weights left in bf16, chunked cross-entropy;
- qlora_lean: qlora_chunked with compiled blocks and checkpointing on every other block; the
  candidate for "QLoRA at half of bf16 LoRA's peak memory and at least 0.8x its speed";
- qlora_trainer: NF4 with the trainer's speed-ups (chunked loss, compiled blocks, bf16 autocast)
  and no fp32 upcast.
The QLoRA variants need bitsandbytes (its NF4 layers also run on the CPU, so --tiny runs them).
Each variant runs on a fresh model; one that runs out of memory or fails is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

from adapters.speed import chunked_loss, compile_blocks, head_off
from bench.step_profile import profile_steps, summary

QWEN_SHAPES = {
    # Public values from Qwen/Qwen2.5-1.5B and Qwen/Qwen2.5-7B config.json.
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}
COMMON = dict(max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu")
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
"""Dense bf16 tensor-core peak by GPU name fragment (FLOP/s), for MFU."""
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Run:
    """How to measure: shapes and step counts."""

    batch: int = 8
    """Sequences per step."""
    seq: int = 1024
    """Tokens per sequence."""
    warmup: int = 3
    """Untimed steps first (compilation happens here)."""
    steps: int = 10
    """Timed steps."""
    device: str = "cuda"
    """`cuda`, or `cpu` for --tiny."""


@dataclass
class Result:
    model: str
    variant: str
    tokens_per_s: float | None = None
    peak_mem_gib: float | None = None
    mfu: float | None = None
    loss: float | None = None
    warmup_s: float | None = None
    """Seconds of the untimed first steps: compiling, for the compiled variants."""
    note: str | None = None
    profile: dict | None = None
    """Where a profiled step's time went (`bench.step_profile`), with --profile."""


@dataclass(frozen=True)
class Variant:
    """What one variant changes in the stock loop."""

    compile: bool = False
    """`torch.compile` each decoder block."""
    chunked_ce: bool = False
    """Chunked cross-entropy from the final hidden states (`chunked_ce`)."""
    checkpoint_every: int = 0
    """Activation checkpointing on every n-th block (0: none, 1: all)."""
    data: str = "full"
    """Rows of random tokens (`full`), or random-length documents `padded` or `packed`."""
    nf4: bool = False
    """bitsandbytes NF4 block weights, double quantization."""
    kbit_prep: bool = False
    """peft's `prepare_model_for_kbit_training` (fp32 upcast, checkpointing on)."""
    autocast: bool = False
    """Run forward and loss under bf16 autocast (for weights that are not all bf16)."""
    recompute: bool = False
    """The chunked loss recomputes each chunk's logits in the backward pass (`recomputed_chunked_loss`)."""
    compile_mode: str | None = None
    """`torch.compile`'s mode for the blocks: None is its default."""
    dropout: float = 0.0
    """LoRA dropout on each adapted layer's input: 0 is peft's default and `adapters.train`'s
    (which defaulted to 0.05 until 2026-11-27)."""


VARIANTS = {
    "stock": Variant(),
    "compile": Variant(compile=True),
    "chunked_ce": Variant(chunked_ce=True),
    "compile_chunked_ce": Variant(compile=True, chunked_ce=True),
    "chunked_ce_recompute": Variant(chunked_ce=True, recompute=True),
    "trainer": Variant(compile=True, chunked_ce=True, autocast=True),
    "trainer_recompute": Variant(compile=True, chunked_ce=True, autocast=True, recompute=True),
    "trainer_dropout": Variant(compile=True, chunked_ce=True, autocast=True, dropout=0.05),
    "trainer_autotune": Variant(compile=True, chunked_ce=True, autocast=True,
                                compile_mode="max-autotune-no-cudagraphs"),
    "autocast": Variant(autocast=True),
    "compile_autocast": Variant(compile=True, autocast=True),
    "checkpointing": Variant(checkpoint_every=1),
    "padded": Variant(data="padded"),
    "packed": Variant(data="packed"),
    "qlora_stock": Variant(nf4=True, kbit_prep=True, autocast=True),
    "qlora_chunked": Variant(nf4=True, chunked_ce=True),
    "qlora_lean": Variant(nf4=True, chunked_ce=True, compile=True, checkpoint_every=2),
    "qlora_trainer": Variant(nf4=True, chunked_ce=True, compile=True, autocast=True),
}


def build_model(shape: str, run: Run, variant: Variant = Variant()):
    """A Qwen2 causal LM with random bf16 weights on the device, set up as `variant` says and wrapped
    by peft LoRA r=16, in training mode."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**QWEN_SHAPES[shape], **COMMON)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(run.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    if variant.nf4:
        to_nf4(model)
        model.is_loaded_in_4bit = True  # as from_pretrained(quantization_config=...) marks it: peft then
        # wraps the NF4 layers in its bitsandbytes LoRA layers, as `adapters.train --qlora` trains them
    if variant.kbit_prep:
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=variant.dropout, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    blocks = model.get_base_model().model.layers
    if variant.checkpoint_every:
        for block in blocks[::variant.checkpoint_every]:
            block.forward = checkpointed(block.forward)
    if variant.compile:
        compile_blocks(model, variant.compile_mode)
    return model.train()


def checkpointed(forward):
    """`forward` that keeps only its inputs and recomputes the rest in the backward pass."""
    import functools

    from torch.utils.checkpoint import checkpoint

    @functools.wraps(forward)
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def to_nf4(model) -> None:
    """Replace every block linear layer by a bitsandbytes NF4 layer (bf16 compute), in place."""
    import bitsandbytes as bnb
    import torch

    for parent in list(model.model.layers.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                # Built on the meta device (no full-size weight allocated and initialised on the CPU),
                # then quantized where the weight already is: moving it quantizes it.
                layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")
                layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
                if child.bias is not None:
                    layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                parent.add_module(name, layer.to(child.weight.device))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_batches(run: Run, vocab: int, data: str, count: int, seed: int = 0) -> list[dict]:
    """Input ids, labels and masks for `count` steps: full random rows, or documents padded or packed."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    if data == "full":
        rows = [torch.randint(1, vocab, (run.batch, run.seq), generator=generator) for _ in range(count)]
        return [{"input_ids": r, "labels": r.clone(), "attention_mask": torch.ones_like(r)} for r in rows]
    lengths = torch.randint(64, run.seq + 1, (count * run.batch * 4,), generator=generator).tolist()
    docs = [torch.randint(1, vocab, (n,), generator=generator) for n in lengths]
    return _packed(docs, run, count) if data == "packed" else _padded(docs, run, count)


def _padded(docs, run: Run, count: int) -> list[dict]:
    import torch

    batches = []
    for step in range(count):
        ids = torch.zeros(run.batch, run.seq, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, doc in enumerate(docs[step * run.batch:(step + 1) * run.batch]):
            ids[row, :len(doc)], mask[row, :len(doc)] = doc, 1
        batches.append({"input_ids": ids, "labels": ids.masked_fill(mask == 0, -100), "attention_mask": mask})
    return batches


def _packed(docs, run: Run, count: int) -> list[dict]:
    import torch

    stream = torch.cat(docs)[: count * run.batch * run.seq].view(count, run.batch, run.seq)
    return [{"input_ids": s, "labels": s.clone(), "attention_mask": torch.ones_like(s)} for s in stream]


def flops_per_token(model, seq: int) -> float:
    """Model FLOPs per trained token for LoRA (see the module docstring)."""
    config = model.config
    return matmul_flops_per_token(model) + 12 * config.num_hidden_layers * config.hidden_size * seq


def matmul_flops_per_token(model) -> float:
    """The weights' share of `flops_per_token`: everything but attention's scores and sums."""
    frozen = sum(_elements(p) for n, p in model.named_parameters() if not p.requires_grad and "embed_tokens" not in n)
    if model.config.tie_word_embeddings:
        frozen += model.get_input_embeddings().weight.numel()  # the output head reuses it
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * frozen + 6 * lora


def _elements(param) -> int:
    """Weights a parameter stands for: an NF4 tensor packs two into each byte it stores."""
    state = getattr(param, "quant_state", None)
    return state.shape.numel() if state is not None else param.numel()


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def train_step(model, batch: dict, optimizer, variant: Variant) -> float:
    """One forward, backward and AdamW step; returns the loss."""
    loss = variant_loss(model, batch, variant)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def variant_loss(model, batch: dict, variant: Variant):
    """The batch's loss as `variant` computes it, ready for `backward`."""
    import torch

    device = batch["input_ids"].device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=variant.autocast):
        if variant.chunked_ce:  # as adapters.train.model_loss computes it
            with head_off(model.get_base_model()) as head:
                hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return (recomputed_chunked_loss if variant.recompute else chunked_loss)(
                hidden, head.weight, batch["labels"], head.bias)
        return model(**batch).loss


def recomputed_chunked_loss(hidden, head_weight, labels, head_bias=None, chunk: int = 1024):
    """`chunked_loss` as the trainer computed it before: each chunk's cross-entropy under activation
    checkpointing, so its logits are computed in the forward pass and again in the backward pass."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    def chunk_sum(part, weight, bias, targets):
        return F.cross_entropy(F.linear(part, weight, bias).float(), targets, ignore_index=-100, reduction="sum")

    flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    total = sum(checkpoint(chunk_sum, flat[start:start + chunk], head_weight, head_bias, targets[start:start + chunk],
                           use_reentrant=False) for start in range(0, flat.shape[0], chunk))
    return total / (targets != -100).sum().clamp(min=1)


def measure(shape: str, name: str, run: Run, peak_override: float | None, profile: bool = False) -> Result:
    """Build a fresh model for one variant, train `warmup + steps` steps, time the last `steps`;
    with `profile`, profile two more (`bench.step_profile`)."""
    import torch

    variant = VARIANTS[name]
    model = build_model(shape, run, variant)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = [{k: v.to(run.device) for k, v in b.items()}
               for b in make_batches(run, model.config.vocab_size, variant.data, run.warmup + run.steps)]
    start = time.perf_counter()
    for batch in batches[:run.warmup]:
        train_step(model, batch, optimizer, variant)
    _sync(run.device)
    warmup = time.perf_counter() - start
    if run.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [train_step(model, batch, optimizer, variant) for batch in batches[run.warmup:]]
    _sync(run.device)
    seconds = time.perf_counter() - start
    tokens = sum(int((b["labels"] != -100).sum()) for b in batches[run.warmup:])
    peak = peak_flops(run.device, peak_override)
    rate = tokens / seconds
    result = Result(
        model=shape, variant=name, tokens_per_s=rate, loss=losses[-1], warmup_s=warmup,
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if run.device == "cuda" else None,
        mfu=rate * flops_per_token(model, run.seq) / peak if peak else None,
    )
    if profile:
        result.profile = profile_steps(lambda batch: train_step(model, batch, optimizer, variant), batches[-2:],
                                       run.device, run.batch * run.seq * matmul_flops_per_token(model),
                                       timed_step_ms=1e3 * seconds / run.steps)
    return result


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def guarded(shape: str, name: str, run: Run, peak_override: float | None, profile: bool = False) -> Result:
    """`measure`, turning a missing dependency, an out-of-memory error or a failure into a note."""
    import importlib.util

    import torch

    if VARIANTS[name].nf4 and importlib.util.find_spec("bitsandbytes") is None:
        return Result(model=shape, variant=name, note="skipped: QLoRA needs bitsandbytes")
    try:
        return measure(shape, name, run, peak_override, profile)
    except torch.OutOfMemoryError as error:
        return Result(model=shape, variant=name, note=f"out of memory: {str(error).splitlines()[0]}")
    except Exception as error:  # one broken variant must not cost the GPU run the others
        return Result(model=shape, variant=name, note=f"failed: {type(error).__name__}: {str(error).splitlines()[0]}")
    finally:
        release(run.device)


def release(device: str) -> None:
    """Collect what the last model left behind and hand its cached GPU memory back, before the next."""
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def table(results: list[Result]) -> str:
    lines = [f"{'model':6} {'variant':20} {'tok/s':>10} {'vs stock':>8} {'peak GiB':>9} {'MFU':>6} {'warmup s':>8}  note"]
    stock = {r.model: r.tokens_per_s for r in results if r.variant == "stock" and r.tokens_per_s}
    for r in results:
        base = stock.get(r.model)
        ratio = f"{r.tokens_per_s / base:8.2f}" if r.tokens_per_s and base else f"{'':8}"
        rate = f"{r.tokens_per_s:10.0f}" if r.tokens_per_s else f"{'-':>10}"
        mem = f"{r.peak_mem_gib:9.1f}" if r.peak_mem_gib is not None else f"{'-':>9}"
        mfu = f"{100 * r.mfu:5.1f}%" if r.mfu is not None else f"{'-':>6}"
        warm = f"{r.warmup_s:8.1f}" if r.warmup_s is not None else f"{'-':>8}"
        lines.append(f"{r.model:6} {r.variant:20} {rate} {ratio} {mem} {mfu} {warm}  {r.note or ''}")
        if r.profile:
            lines.append(f"{'':27} {summary(r.profile)}")
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench train_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["1.5b", "7b"], default=["1.5b", "7b"])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak of this GPU, when its name is not known")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, 2 steps, on CPU unless CUDA is present")
    parser.add_argument("--profile", action="store_true",
                        help="profile two more steps of each variant: where the time goes (bench/step_profile.py)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    parser.add_argument("--jsonl", action="store_true",
                        help="one JSON line per variant, printed as it finishes (a run cut short keeps them)")
    return parser.parse_args(argv)


def device_for(command: str, tiny: bool) -> str | None:
    """`cuda` where there is a GPU, else `cpu` for a --tiny check; None, having said why, for neither."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if tiny:
        return "cpu"
    print(f"python -m bench {command}: error: no CUDA GPU; use --tiny to check the script on CPU", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    import torch

    device = device_for("train_gpu", args.tiny)
    if device is None:
        return 2
    if args.tiny:
        run, shapes = Run(batch=2, seq=64, warmup=1, steps=2, device=device), ["tiny"]
    else:
        run, shapes = Run(steps=args.steps), args.models
    results = []
    for shape in shapes:
        for variant in args.variants:
            results.append(guarded(shape, variant, run, args.peak_tflops, args.profile))
            if args.jsonl:
                print(json.dumps(asdict(results[-1])), flush=True)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    elif not args.jsonl:
        device = torch.cuda.get_device_name() if run.device == "cuda" else "CPU"
        print(f"LoRA r=16 training, batch {run.batch} x seq {run.seq}, bf16, {device}")
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
