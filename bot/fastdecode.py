"""Greedy decoding of one request on CPU, faster than `model.generate`, with the same tokens.

Three things make it faster, each optional so the benchmark can measure what each one pays:
- a static KV cache (`transformers.StaticCache`): fixed shapes, so one compiled graph serves every step;
- `torch.compile` of one decode step, argmax included, so a token costs one call instead of
  `generate`'s logits processors, stopping criteria and cache bookkeeping in Python;
- weight-only quantized linear layers (`quantize`): int8 per output channel (lossy, half of bf16's
  bytes), or int4 in groups of 32 that reproduces Q4_1 GGUF weights exactly (`int4-exact`).

The reference for "same tokens" is `model.generate` on the same weights: `round_to_int8` writes
the int8-rounded weights back into the model first, so generate and the int8 kernels agree on them.
This module does not sample, batch, pad, or know about chat templates; `Generator` does.
For Llama-style models `bot.native` is much faster (one C call per token); this loop serves any model.

    decoder = FastDecoder(model, max_len=1024)
    for token in decoder.tokens(input_ids, max_new_tokens=128, eos_ids={2}):
        ...
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

QUANTIZATIONS = ("none", "int8", "int4-exact")
GROUP = 32
"""Elements per int4 quantization group along the input dimension: Q4_1's block size."""


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with one scale per output channel; no bias."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        scale = weight.float().abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,)
        self.register_buffer("qweight", torch.round(weight.float() / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale.to(weight.dtype))
        self.out_features = weight.shape[0]

    def dequantized(self) -> torch.Tensor:
        """The weight these kernels multiply by, in the activations' dtype."""
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return torch._weight_int8pack_mm(flat, self.qweight, self.scale).reshape(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """A linear layer stored as int4 in groups of 32 with an fp32 scale and offset; no bias.

    Built only from a weight that is already int4 in groups (a dequantized Q4_1 GGUF tensor:
    every group is `d * q + m` with q in 0..15), so packing loses nothing; anything else raises.
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        q, scale, low = exact_int4_groups(weight)
        # The kernel computes (q - 8) * scale + zero.
        zero = low + 8 * scale
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q, 1))
        self.register_buffer("scale_zero", torch.stack([scale.T, zero.T], dim=-1).contiguous())  # (in/32, out, 2)
        self.out_features = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scale_zero)
        return out.reshape(*x.shape[:-1], self.out_features)


def exact_int4_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split an fp32 (out, in) weight into q (int32, 0..15), scale and low (fp32, (out, in/32)).

    Raises ValueError when some group is not exactly `scale * q + low`.
    """
    if weight.dtype != torch.float32 or weight.shape[1] % GROUP:
        raise ValueError(f"int4-exact needs fp32 weights with in_features divisible by {GROUP}")
    groups = weight.reshape(weight.shape[0], -1, GROUP)
    low = groups.amin(dim=-1)
    # Q4_1 stores the scale in fp16, so rounding the estimate to fp16 recovers it exactly.
    scale = ((groups.amax(dim=-1) - low) / 15).half().float()
    q = torch.round((groups - low[..., None]) / torch.where(scale > 0, scale, 1)[..., None]).clamp(0, 15)
    # In float64 d * q + m is exact, so this accepts only weights that are exactly those numbers
    # (an fp32 sum could round and hide a weight that is not).
    if not torch.equal(scale.double()[..., None] * q.double() + low.double()[..., None], groups.double()):
        raise ValueError("weights are not exactly int4 in groups of 32 (int4-exact needs a dequantized Q4_1 model)")
    return q.reshape(weight.shape).to(torch.int32), scale, low


def _decoder_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for each bias-free linear layer in the transformer blocks."""
    found = []
    for parent in model.model.layers.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) and child.bias is None:
                found.append((parent, name, child))
    return found


def round_to_int8(model: nn.Module) -> None:
    """Replace each decoder linear weight and the output head by its int8-rounded value, in place.

    After this, `model.generate` and the int8 kernels multiply by the same weights. The head is
    untied from the input embedding first, so token lookups keep the original embedding.
    """
    with torch.no_grad():
        if model.lm_head.weight is model.get_input_embeddings().weight:
            model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
        for _, _, linear in [*_decoder_linears(model), (None, None, model.lm_head)]:
            linear.weight.copy_(Int8Linear(linear.weight).dequantized())


def quantize(model: nn.Module, scheme: str) -> nn.Module:
    """A shallow copy of `model` whose linear layers use weight-only kernels; the model is unchanged.

    `int8`: decoder layers and head, per-channel int8 (call `round_to_int8` first for exact agreement).
    `int4-exact`: decoder layers as lossless int4 (fp32 dequantized-Q4_1 weights only); the head stays dense.
    """
    import copy

    if scheme not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization '{scheme}'; choose one of: {', '.join(QUANTIZATIONS)}")
    if scheme == "none":
        return model
    packer = Int8Linear if scheme == "int8" else Int4Linear
    replacements = [(parent, name, packer(linear.weight.detach())) for parent, name, linear in _decoder_linears(model)]
    clone = copy.copy(model)
    clone._modules = dict(model._modules)
    clone.model = _copy_tree(model.model)
    for parent, name, packed in replacements:
        _find_copy(clone.model, model.model, parent).add_module(name, packed)
    if scheme == "int8":
        clone.lm_head = Int8Linear(model.lm_head.weight.detach())
    return clone


def _copy_tree(module: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer with the original."""
    import copy

    clone = copy.copy(module)
    clone._modules = {name: _copy_tree(child) for name, child in module._modules.items()}
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    return clone


def _find_copy(clone_root: nn.Module, root: nn.Module, target: nn.Module) -> nn.Module:
    """The module in `clone_root` at the same path as `target` in `root`."""
    path = next(name for name, module in root.named_modules() if module is target)
    return clone_root.get_submodule(path)


MIN_CACHE = 256
"""Smallest static cache (tokens); larger ones double, so a step never attends to many empty slots."""


class FastDecoder:
    """Greedy decoding for batch 1 with a static cache and, optionally, a compiled step.

    Not thread-safe: one request at a time (the generator's lock). Each cache size (a power of two
    from MIN_CACHE up to `max_len`) is compiled once, on first use.
    """

    def __init__(self, model: nn.Module, max_len: int = 1024, compile: bool = True):
        """`model` is a causal LM in eval mode (possibly from `quantize`); `max_len` bounds prompt plus answer."""
        self.model = model
        self.max_len = max_len
        self.step = torch.compile(self._step, dynamic=False) if compile else self._step
        self.caches: dict = {}
        """Static caches by size, reused and reset per request: a fresh one would make the compiled step re-trace."""

    def _cache(self, need: int):
        from transformers import StaticCache

        size = MIN_CACHE
        while size < need:
            size *= 2
        size = min(size, self.max_len)
        if size not in self.caches:
            self.caches[size] = StaticCache(config=self.model.config, max_cache_len=size)
        return self.caches[size]

    def _step(self, token: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
        """Next token (1, 1) after `token` (1, 1) at `position` (1, 1); writes the cache in place."""
        logits = self.model(input_ids=token, position_ids=position, cache=cache, use_cache=True, logits_to_keep=1).logits
        return logits[:, -1].argmax(dim=-1, keepdim=True)

    def tokens(self, input_ids: torch.Tensor, max_new_tokens: int, eos_ids: set[int], adapter: str | None = None,
               model: nn.Module | None = None) -> Iterator[int]:
        """Yield new token ids one at a time, the end-of-turn token included; stop when the caller stops.

        `adapter` and `model` are there to match `NativeDecoder.tokens`: this loop runs its own model only."""
        if adapter is not None or (model is not None and model is not self.model):
            raise ValueError("the compiled decode loop runs its own base model only, without adapters")
        length = input_ids.shape[1]
        if length + max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({length}) plus max_new_tokens ({max_new_tokens}) exceeds max_len {self.max_len}")
        cache = self._cache(length + max_new_tokens)
        with torch.inference_mode():
            cache.reset()
            logits = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1).logits
            token = logits[:, -1].argmax(dim=-1, keepdim=True)
            for produced in range(1, max_new_tokens + 1):
                value = token.item()
                yield value
                if value in eos_ids or produced == max_new_tokens:
                    return
                position = torch.full((1, 1), length + produced - 1, dtype=torch.long)
                token = self.step(token, position, cache).clone()

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_ids: set[int]) -> torch.Tensor:
        """Prompt and answer ids (1, length), like `model.generate` with greedy decoding."""
        new = list(self.tokens(input_ids, max_new_tokens, eos_ids))
        return torch.cat([input_ids, torch.tensor([new], dtype=input_ids.dtype)], dim=1)
