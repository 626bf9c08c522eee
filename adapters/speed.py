"""Two training speed-ups that leave the result unchanged: a chunked loss and compiled blocks.

- **Chunked loss.** A causal LM's own loss builds the (batch, seq, vocab) logits, then an fp32
  copy of them, and keeps both for the backward pass: with a 152k vocabulary, batch 8 x 1024
  tokens, that is 7.5 GB. `chunked_loss` takes the final hidden states instead (the output head
  is swapped for an identity while training, `HeadOff`) and computes the loss 1024 tokens at a
  time, each chunk's logits recomputed in the backward pass rather than stored. The loss and the
  gradients equal the model's own (`tests/test_speed.py`).
- **Compiled blocks.** `compile_blocks` compiles each decoder block with `torch.compile`
  (regional compilation: the blocks share one compiled graph, so it compiles once, not once per
  layer), fusing the norms, rotary embedding, activations and LoRA's small element-wise steps.

`bench/train_gpu.py` measures both against the stock peft loop; `choose` turns them on where that
measurement says they pay (see BENCHMARKS.md).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

CHUNK = 1024
"""Tokens per chunk of the chunked loss: 1024 x vocab fp32 logits exist at once (0.6 GB at 152k)."""
COMPILE_MIN_WORK = 2e15
"""A run compiles its blocks by default only when its base's parameters times the tokens each
process trains on reach this. Compiling costs about 12 s once (an H200, a Qwen2.5-1.5B shape) and
then saved 0.127 s on each step of 8,192 tokens, so it paid after about 95 steps: 1.2e15."""


@dataclass(frozen=True)
class Speedups:
    chunked_loss: bool
    compile: bool


def choose(config, engine: str, device: str, work: float) -> Speedups:
    """Resolve the config's `chunked_loss` and `compile` (None = automatic) for this run.

    `engine` is `"one"` (one process), `"ddp"` or `"sharded"` (FSDP, DeepSpeed); `work` the base's
    parameters times the tokens each process trains on (`COMPILE_MIN_WORK`). Both speed-ups
    need the whole output head and blocks in each process, so a sharded run uses neither (the
    trainer refuses an explicit request, `lora.check_engine`). Automatically both run on a CUDA
    GPU, compiling only runs long enough to repay it; on a CPU neither pays (the vocabulary is
    small next to the model there, and compiling takes longer than short CPU runs take).
    """
    if engine == "sharded":
        return Speedups(chunked_loss=False, compile=False)
    gpu = device == "cuda"
    chunked = config.chunked_loss if config.chunked_loss is not None else gpu
    compiled = config.compile if config.compile is not None else gpu and work >= COMPILE_MIN_WORK
    return Speedups(chunked_loss=chunked, compile=compiled)


def chunked_loss(hidden, head_weight, labels, head_bias=None, chunk: int = CHUNK):
    """Mean next-token cross-entropy over the labelled tokens, as a causal LM's own loss computes it.

    `hidden` is (batch, seq, hidden): the last block's normalised output; `labels` (batch, seq)
    with -100 where no loss is taken. Position t predicts labels[t + 1]. Each chunk's logits are
    computed in fp32 and recomputed in the backward pass, so at most `chunk` x vocab exist at once.
    A batch with no labelled token has loss 0 (the model's own loss would be NaN).
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, flat.shape[0], chunk):
        part = slice(start, start + chunk)
        if (targets[part] == -100).all():
            continue  # prompt tokens only: no loss, no gradient, no need to compute the logits
        total = total + checkpoint(_chunk_sum, flat[part], head_weight, head_bias, targets[part], use_reentrant=False)
    if not total.requires_grad and hidden.requires_grad:
        total = total + hidden.sum() * 0  # nothing labelled: a zero loss that backward still accepts
    return total / (targets != -100).sum().clamp(min=1)


def _chunk_sum(hidden, weight, bias, targets):
    import torch.nn.functional as F

    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, ignore_index=-100, reduction="sum")


def check_head(model) -> str | None:
    """Why `model`'s loss cannot be chunked (None when it can): the head must be a plain linear
    layer whose logits go straight into the loss."""
    import torch

    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return f"its output head is a {type(head).__name__}, not a linear layer"
    for scaling in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(model.config, scaling, None) not in (None, 1, 1.0):
            return f"it rescales its logits ({scaling})"
    return None


@contextmanager
def head_off(model):
    """Within the block, `model`'s forward returns its final hidden states as `logits`; yields the
    head (a Linear) to apply them to. The head is put back on leaving, whatever happens."""
    import torch

    head = model.get_output_embeddings()
    model.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        model.set_output_embeddings(head)


def decoder_blocks(model):
    """The repeated decoder blocks of a transformers causal LM (peft-wrapped or not)."""
    import torch

    layers = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return module
    raise ValueError(f"no list of {layers} decoder blocks found in {type(model).__name__}")


def compile_blocks(model) -> int:
    """Compile each decoder block in place (`Module.compile`: parameter names do not change, so
    PEFT still finds the adapter's weights); return how many."""
    blocks = decoder_blocks(model)
    for block in blocks:
        block.compile()
    return len(blocks)
