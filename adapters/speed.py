"""Two training speed-ups that leave the result unchanged: a chunked loss and compiled blocks.

- **Chunked loss.** A causal LM's own loss builds the (batch, seq, vocab) logits, then an fp32
  copy of them, and keeps both for the backward pass: with a 152k vocabulary, batch 8 x 1024
  tokens, that is 7.5 GB. `chunked_loss` takes the final hidden states instead (the output head
  is swapped for an identity while training, `head_off`) and computes the loss 1024 tokens at a
  time, each chunk's gradients computed in the forward pass while its logits are at hand, so no
  logits are stored or computed twice. The loss and the gradients equal the model's own, to
  rounding (`tests/test_speed.py`). It pays in memory, and in time it is about even with the
  model's own loss: for the default model on a 2-core CPU 0.94-1.10x in three runs, and 1.03-1.19x
  the earlier version, which recomputed each chunk's logits in the backward pass. On an H200 at
  the Qwen2.5-1.5B shape that earlier version ran at 0.94x the stock loop, in 36 GiB instead of
  48; the current one is not yet measured there.
- **Compiled blocks.** `compile_blocks` compiles each decoder block with `torch.compile`
  (regional compilation: the blocks share one compiled graph, so it compiles once, not once per
  layer), fusing the norms, rotary embedding, activations and LoRA's small element-wise steps.
  It pays in time (1.62x alone there) once a run is long enough to repay the compiling.

`bench/train_gpu.py` measures both against the stock peft loop; `choose` decides when each runs
(BENCHMARKS.md has the numbers).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache
from dataclasses import dataclass

CHUNK = 1024
"""Tokens per chunk of the chunked loss: 1024 x vocab fp32 logits exist at once (0.6 GB at 152k)."""
COMPILE_MIN_WORK = 2e15
"""A run compiles its blocks by default only when its base's parameters times the tokens each
process trains on reach this. Compiling costs about 12 s once (an H200, a Qwen2.5-1.5B shape) and
then saved 0.127 s on each step of 8,192 tokens, so it paid after about 95 steps: 1.2e15.
That was measured on batches of one fixed shape. The trainer's padded batches vary in length, so
torch.compile compiles again once it sees a second length (then for any length), and once more
for the eval pass: a few compilations rather than one, which the margin here is meant to cover."""


@dataclass(frozen=True)
class Speedups:
    chunked_loss: bool
    compile: bool

    def names(self) -> list[str]:
        """The speed-ups in use, as the adapter's metadata records them."""
        return [name for name, used in (("chunked loss", self.chunked_loss), ("compiled blocks", self.compile)) if used]


def choose(config, sharded: bool, device: str, work: float) -> Speedups:
    """Resolve the config's `chunked_loss` and `compile` (None = automatic) for this run.

    `sharded`: the engine splits the model across processes (FSDP, DeepSpeed, `lora.is_sharded`);
    `work`: the base's parameters times the tokens each process trains on (`COMPILE_MIN_WORK`). Both speed-ups
    need the whole output head and blocks in each process, so a sharded run uses neither (the
    trainer refuses an explicit request, `lora.check_engine`). Automatically the chunked loss runs
    everywhere else: it saves memory, and on the CPU it is about as fast as the model's own loss
    (0.94-1.10x for the default model in three runs of `python -m bench train`, BENCHMARKS.md).
    Compiling runs on a CUDA GPU for runs long enough to repay it; on a CPU it is only asked for
    (tens of seconds per compilation on two cores, for 1.15-1.29x per step on fixed shapes, and
    a padded 60-step run gained 2%).
    """
    if sharded:
        return Speedups(chunked_loss=False, compile=False)
    chunked = config.chunked_loss if config.chunked_loss is not None else True
    compiled = config.compile if config.compile is not None else device == "cuda" and work >= COMPILE_MIN_WORK
    return Speedups(chunked_loss=chunked, compile=compiled)


def chunked_loss(hidden, head_weight, labels, head_bias=None, chunk: int = CHUNK):
    """Mean next-token cross-entropy over the labelled tokens, as a causal LM's own loss computes it.

    `hidden` is (batch, seq, hidden): the last block's normalised output; `labels` (batch, seq)
    with -100 where no loss is taken. Position t predicts labels[t + 1]. The logits exist one
    chunk of `chunk` positions at a time, in fp32 (`LinearCrossEntropy`). A batch with no
    labelled token has loss 0 (the model's own loss would be NaN).
    """
    import torch

    flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    gradients = torch.is_grad_enabled()  # Function.forward runs with grad mode off: ask here
    total = _linear_cross_entropy().apply(flat, head_weight, head_bias, targets, chunk, gradients)
    return total / (targets != -100).sum().clamp(min=1)


@cache
def _linear_cross_entropy():
    """`LinearCrossEntropy`, defined on first use so that importing this module does not import torch."""
    import torch
    import torch.nn.functional as F

    def one_chunk(hidden, weight, bias, targets, grad_hidden, grad_weight, grad_bias):
        """The chunk's summed loss; its gradients added into the buffers given (None: not wanted).
        A function of its own, so that the chunk's vocabulary-wide tensors are freed on return."""
        scores = F.linear(hidden.to(weight.dtype), weight, bias).float()
        valid = targets != -100
        picked = targets.clamp(min=0)[:, None]
        lse = scores.logsumexp(-1, keepdim=True)
        loss = ((lse - scores.gather(1, picked)).squeeze(1) * valid).sum()
        if grad_hidden is None and grad_weight is None and grad_bias is None:
            return loss
        grad = scores.sub_(lse).exp_()  # softmax, in place of the fp32 scores
        del scores
        grad.scatter_add_(1, picked, -valid[:, None].to(grad.dtype))
        grad.mul_(valid[:, None])
        if grad_bias is not None:
            grad_bias += grad.sum(0)
        grad = grad.to(weight.dtype)  # as autograd feeds the head's product its gradient
        if grad_hidden is not None:
            grad_hidden += (grad @ weight).to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight += (grad.t() @ hidden.to(grad.dtype)).float()
        return loss

    class LinearCrossEntropy(torch.autograd.Function):
        """Summed cross-entropy of `F.linear(hidden, weight, bias)` against `targets` (-100: none),
        whose gradients are computed in the forward pass, chunk by chunk, while each chunk's logits
        are at hand: the gradient of the summed loss with respect to a chunk's logits is
        softmax(logits) - onehot(target). The backward pass only scales them. A chunk's logits are
        thus computed once: recomputing them in the backward pass instead (checkpointing) takes the
        head's work from two products to three, and keeping them all takes vocabulary x tokens of memory.
        Chunks with no labelled position are skipped: no logits, zero gradient. Matrix products run in
        the head's dtype, or in autocast's (bf16) under autocast, as autograd would run them for the
        model's own loss; the softmax and the sums in fp32."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, chunk: int, gradients: bool):
            wanted = [gradients and need for need in ctx.needs_input_grad[:3]]
            grad_hidden = torch.zeros_like(hidden) if wanted[0] else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if wanted[1] else None
            grad_bias = torch.zeros_like(bias, dtype=torch.float32) if wanted[2] else None
            device = hidden.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
            head = weight.to(dtype), None if bias is None else bias.to(dtype)  # cast once, not per chunk
            total = hidden.new_zeros((), dtype=torch.float32)
            parts = targets.split(chunk)
            labelled = torch.stack([(part != -100).any() for part in parts]).tolist()  # one device sync
            for index, part_targets in enumerate(parts):
                if labelled[index]:
                    rows = slice(index * chunk, index * chunk + len(part_targets))
                    total += one_chunk(hidden[rows], *head, part_targets,
                                       None if grad_hidden is None else grad_hidden[rows], grad_weight, grad_bias)
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
            return total

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad_total):
            grads = [None if grad is None else (grad * grad_total).to(dtype)
                     for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
            return *grads, None, None, None

    return LinearCrossEntropy


def check_head(model) -> str | None:
    """Why `model`'s loss cannot be chunked (None when it can).

    The chunked loss assumes that the logits are the output head applied to what the model
    returns once the head is swapped for an identity. Some models transform them after the head
    (Gemma 2 and RecurrentGemma cap them softly) under names no list could keep up with, so this
    runs the model on a few tokens both ways and compares. A scale applied before the head, as
    Cohere's, passes: it is part of what the swapped model returns.

    The probe runs in training mode, as the model trains: in eval mode some layers change
    themselves (bitsandbytes repacks its 4-bit weights for its CPU kernel on the first eval forward
    pass, and the run would then train on the repacked ones). Both runs start from the same random
    state, so any dropout draws the same masks in each, and the state is put back afterwards.
    """
    import torch
    import torch.nn.functional as F

    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return f"its output head is a {type(head).__name__}, not a linear layer"
    device = head.weight.device
    probe = torch.arange(1, 9, device=device).clamp(max=model.config.get_text_config().vocab_size - 1)[None]
    def same_random_state():  # each run starts from the state both found; training's is left as it was
        if device.type == "cpu":
            return torch.random.fork_rng(devices=[])
        return torch.random.fork_rng(devices=[device], device_type=device.type)

    training = model.training
    model.train()
    try:
        with torch.no_grad():
            with same_random_state():
                logits = model(input_ids=probe).logits.float()
            with same_random_state(), head_off(model) as kept:
                rebuilt = F.linear(model(input_ids=probe).logits, kept.weight, kept.bias).float()
    finally:
        model.train(training)
    if not torch.allclose(rebuilt, logits, rtol=1e-3, atol=1e-3 * logits.abs().max().item()):
        return "its logits are not its output head's product (the model transforms them after the head, e.g. a soft cap)"
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

    layers = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers and "vision" not in name:
            return module
    raise ValueError(f"--compile: no list of decoder blocks found in {type(model).__name__}; use --no-compile")


def compile_blocks(model, mode: str | None = None) -> int:
    """Compile each decoder block in place (`Module.compile`: parameter names do not change, so
    PEFT still finds the adapter's weights); return how many. `mode`: `torch.compile`'s."""
    blocks = decoder_blocks(model)
    for block in blocks:
        block.compile(mode=mode)
    return len(blocks)
