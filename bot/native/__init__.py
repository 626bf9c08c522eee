"""Greedy CPU decoding with one C call per token, for Llama-family models.

transformers runs the prompt (the same prefill as `generate`) and this module copies its KV cache
into flat buffers; after that each new token is one call to `icl_step` in `decode.c`, which runs
every layer, the head and the argmax with no Python or operator dispatch in between.

Weights keep their values, in the fewest bytes that hold them exactly: a linear layer whose fp32
weight is a dequantized Q4_1 or Q8_0 tensor (as a GGUF checkpoint loads) is stored in that form, 4 or
8 bits per weight plus a scale per group of 32; one whose values are all bfloat16 numbers (a bf16
checkpoint, as the hub's SmolLM2 is, loaded in fp32) as 16 bits; any other stays dense fp32. Only
the order of additions differs from transformers, so greedy tokens match `generate` in fp32 (the
tests and `python -m bench decode` check this on the default model and on tiny ones).

LoRA adapters loaded on the model later (peft, by name, as the generator serves them) are added in
the same call: each adapted layer also computes `scale * B (A x)`, with A and B read from peft's own
tensors, so nothing is copied and switching adapters between requests costs nothing.

The C file is compiled on first use with the system's C compiler (`cc`, or `$CC`) into a cache
folder, with AVX-512 where the CPU has it. Without a compiler `NativeDecoder` raises
`NativeUnavailable` and callers keep their other paths.

    decoder = NativeDecoder(model)          # a LlamaForCausalLM in fp32 on the CPU, eval mode
    for token in decoder.tokens(input_ids, max_new_tokens=128, eos_ids={2}):
        ...
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from bot.fastdecode import GROUP, exact_int4_groups

SOURCE = Path(__file__).with_name("decode.c")
KIND_F32, KIND_Q8, KIND_Q4, KIND_BF16 = 0, 1, 2, 3
PROJECTIONS = (("self_attn", "q"), ("self_attn", "k"), ("self_attn", "v"), ("self_attn", "o"),
               ("mlp", "gate"), ("mlp", "up"), ("mlp", "down"))
"""The linear layers of a block, in `Layer`'s order: (part, name) for `block.part.name_proj`."""
MAX_RANK = 1024
PEFT_BASE = "__base__"
"""peft's name for "no adapter" in `adapter_names`."""
BLOCK = 16
"""Rows per block of packed weights (`decode.c`'s BLOCK)."""
CACHE_STEP = 256
"""KV buffers hold a multiple of this many positions (at most the decoder's `max_len`)."""


class NativeUnavailable(RuntimeError):
    """The C decoder cannot be built or cannot run this model; the message says why."""


# ---- building and loading the library -------------------------------------------------------

_library = None
_library_lock = threading.Lock()


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "icl-bot" / "native"


def compile_flags() -> list[str]:
    """AVX-512 where the CPU has it (torch's own dispatch decides), portable C otherwise."""
    flags = ["-O3", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=fast"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16", "AMX"):
        flags += ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mf16c"]
    return flags


def library() -> ctypes.CDLL:
    """The compiled decoder, built once per source and flags; raises NativeUnavailable."""
    global _library
    with _library_lock:
        if _library is None:
            _library = _load(_build())
        return _library


def _build() -> Path:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise NativeUnavailable("no C compiler found (set CC, or install gcc) to build the native decoder")
    flags = compile_flags()
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    target = cache_dir() / f"decode-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        try:
            result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built), "-lm"],
                                    capture_output=True, text=True)
        except OSError as error:
            raise NativeUnavailable(f"cannot run the C compiler {compiler!r}: {error}") from error
        if result.returncode != 0:
            raise NativeUnavailable(f"compiling {SOURCE.name} failed:\n{result.stderr.strip()}")
        os.replace(built, target)  # atomic: another process never loads a half-written library
    for stale in target.parent.glob("decode-*.so"):  # builds of older sources or other flags
        if stale != target:
            stale.unlink(missing_ok=True)  # a process that loaded it keeps its mapping
    return target


def _load(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        raise NativeUnavailable(f"cannot load the native decoder {path}: {error}") from error
    lib.icl_step.argtypes = [ctypes.POINTER(_Model), ctypes.POINTER(_Scratch), ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.icl_step.restype = ctypes.c_int
    return lib


# ---- the C structures ---------------------------------------------------------------------------

_float_p = ctypes.POINTER(ctypes.c_float)


class _Linear(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("rows", ctypes.c_int32), ("cols", ctypes.c_int32),
                ("q", ctypes.c_void_p), ("dm", ctypes.POINTER(ctypes.c_uint16)),
                ("rank", ctypes.c_int32), ("lora_scale", ctypes.c_float), ("lora_a", _float_p), ("lora_b", _float_p)]


class _Layer(ctypes.Structure):
    _fields_ = [("attn_norm", _float_p), ("ffn_norm", _float_p),
                *[(name, _Linear) for name in ("q", "k", "v", "o", "gate", "up", "down")]]


class _Model(ctypes.Structure):
    _fields_ = [*[(name, ctypes.c_int32) for name in
                  ("hidden", "inter", "layers", "heads", "kv_heads", "head_dim", "vocab", "max_len")],
                ("eps", ctypes.c_float), ("attn_scale", ctypes.c_float), ("inv_freq", _float_p), ("embed", _float_p), ("final_norm", _float_p),
                ("head", _Linear), ("layer", ctypes.POINTER(_Layer)), ("k_cache", _float_p), ("v_cache", _float_p)]


class _Scratch(ctypes.Structure):
    _fields_ = [(name, _float_p) for name in
                ("x", "xn", "q", "att", "k", "v", "gate", "up", "scores", "logits", "sums")]


def _ptr(tensor: torch.Tensor, kind=_float_p):
    if not tensor.is_contiguous():
        raise ValueError("native decoder buffers must be contiguous")
    return ctypes.cast(tensor.data_ptr(), kind)


# ---- packing weights ----------------------------------------------------------------------------

class PackedLinear:
    """One weight in the layout `decode.c` multiplies by, holding the tensors it points into."""

    def __init__(self, weight: torch.Tensor):
        weight = weight.detach()
        if weight.dtype != torch.float32:
            raise NativeUnavailable(f"the native decoder needs fp32 weights, not {weight.dtype}")
        rows, cols = weight.shape
        self.kind, self.tensors = KIND_F32, [weight.contiguous()]
        packers = ((KIND_Q4, _pack_q4), (KIND_Q8, _pack_q8)) if cols % GROUP == 0 else ()
        for kind, pack in (*packers, (KIND_BF16, _pack_bf16)):  # the fewest bytes that hold the values
            try:
                self.tensors = pack(weight)
            except ValueError:
                continue
            self.kind = kind
            break
        self.rows, self.cols = rows, cols

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def struct(self) -> _Linear:
        dm = _ptr(self.tensors[1], ctypes.POINTER(ctypes.c_uint16)) if len(self.tensors) > 1 else None
        return _Linear(self.kind, self.rows, self.cols, ctypes.c_void_p(self.tensors[0].data_ptr()), dm)


def _pack_q4(weight: torch.Tensor) -> list[torch.Tensor]:
    """Codes and (d, m) scales in `decode.c`'s row blocks, when the weight is exactly d * q + m."""
    q, scale, low = exact_int4_groups(weight)  # raises ValueError unless exactly d * q + m
    q = _blocks(q.to(torch.uint8).reshape(weight.shape[0], -1, 2, 16))  # (blocks, 16 rows, groups, half, j)
    codes = (q[:, :, :, 0] | (q[:, :, :, 1] << 4)).permute(0, 2, 3, 1)  # (blocks, groups, j, rows)
    scales = torch.stack([_blocks(scale), _blocks(low)], dim=2).permute(0, 3, 2, 1)  # (blocks, groups, d|m, rows)
    return [codes.contiguous(), _as_half(scales)]


def _pack_q8(weight: torch.Tensor) -> list[torch.Tensor]:
    """int8 codes and fp16 scales in row blocks, when the weight is exactly d * q with q in -127..127."""
    groups = weight.reshape(weight.shape[0], -1, GROUP)
    scale = (groups.abs().amax(dim=-1) / 127).half().float()
    q = torch.round(groups / torch.where(scale > 0, scale, 1)[..., None])
    if q.abs().amax() > 127 or not torch.equal(scale[..., None] * q, groups):
        raise ValueError("weights are not exactly int8 in groups of 32")
    codes = _blocks(q.to(torch.int8)).permute(0, 2, 3, 1)  # (blocks, groups, column, rows)
    return [codes.contiguous(), _as_half(_blocks(scale).permute(0, 2, 1))]


def _pack_bf16(weight: torch.Tensor) -> list[torch.Tensor]:
    """The top 16 bits of each weight in row blocks, when every weight is a bfloat16 number."""
    half = weight.bfloat16()
    if not torch.equal(half.float(), weight):
        raise ValueError("weights are not bfloat16 numbers")
    return [_blocks(half.view(torch.int16)).permute(0, 2, 1).contiguous()]  # (blocks, columns, rows)


def _blocks(tensor: torch.Tensor) -> torch.Tensor:
    """(rows, ...) -> (blocks, BLOCK, ...), padding the last block with zero rows."""
    pad = -tensor.shape[0] % BLOCK
    if pad:
        tensor = torch.cat([tensor, tensor.new_zeros(pad, *tensor.shape[1:])])
    return tensor.reshape(-1, BLOCK, *tensor.shape[1:])


def _trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise: packing's temporaries
    and each request's buffers would stay in the resident set)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` itself when it is already contiguous fp32 (so the pointer stays valid with it)."""
    if tensor.dtype != torch.float32 or not tensor.is_contiguous():
        raise NativeUnavailable("LoRA weights must be contiguous fp32")
    return tensor.detach()


def _as_half(scales: torch.Tensor) -> torch.Tensor:
    """The scales as fp16, which holds Q4_1's and Q8_0's scales exactly; raises ValueError otherwise."""
    half = scales.half()
    if not torch.equal(half.float(), scales):
        raise ValueError("group scales are not fp16 numbers")
    return half.contiguous()


# ---- the decoder ----------------------------------------------------------------------------------

def check_supported(model: nn.Module) -> None:
    """Raise NativeUnavailable unless `model` is a plain Llama-style decoder this C code computes exactly."""
    config = model.config
    problems = []
    if getattr(model, "device", torch.device("cpu")).type != "cpu" or model.dtype != torch.float32:
        problems.append(f"it needs an fp32 model on the CPU, not {model.dtype} on {model.device}")
    if config.model_type not in ("llama", "mistral") or getattr(config, "sliding_window", None):
        problems.append(f"it computes Llama-style decoders without sliding windows, not '{config.model_type}'")
    if model.training:
        problems.append("the model is in training mode (dropout); call .eval()")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"activation {config.hidden_act!r} is not silu")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("linear layers with biases are not supported")
    blocks = getattr(getattr(model, "model", None), "layers", None)
    if blocks is None or not all(_plain_block(block) for block in blocks):
        problems.append("its blocks are not plain Llama blocks (q/k/v/o and gate/up/down linear layers, RMS norms)")
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or tuple(embedding.weight.shape) != tuple(head.weight.shape):
        problems.append("the output head must have the input embedding's shape (vocabulary x hidden size)")
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None or getattr(rotary, "attention_scaling", 1.0) != 1.0 or getattr(rotary, "rope_type", "default") != "default":
        problems.append("only the default rotary embedding is supported")
    if problems:
        raise NativeUnavailable("the native decoder cannot run this model: " + "; ".join(problems))


def _silu_types() -> tuple[type, ...]:
    from transformers import activations

    return (nn.SiLU, getattr(activations, "SiLUActivation", nn.SiLU))


def _plain_block(block: nn.Module) -> bool:
    names = [("self_attn", f"{n}_proj") for n in "qkvo"] + [("mlp", f"{n}_proj") for n in ("gate", "up", "down")]
    linears = [getattr(getattr(block, part, None), name, None) for part, name in names]
    norms = [getattr(block, name, None) for name in ("input_layernorm", "post_attention_layernorm")]
    return (all(type(layer) is nn.Linear and layer.bias is None for layer in linears)
            and all(getattr(norm, "weight", None) is not None for norm in norms)
            and type(getattr(block.mlp, "act_fn", None)) in _silu_types())


class NativeDecoder:
    """Greedy batch-1 decoding through `decode.c`. Not thread-safe: one request at a time.

    The packed weights share nothing with the model's parameters and are built once, here; the
    model itself is still used for the prompt, so keep it unchanged while this decoder lives.
    """

    def __init__(self, model: nn.Module, max_len: int = 2048, threads: int | None = None):
        check_supported(model)
        self.lib = library()
        self.model = model
        self.max_len = max_len
        self.threads = threads or torch.get_num_threads()
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        attention = model.model.layers[0].self_attn  # head size and score scale as transformers computes them
        self.head_dim = getattr(attention, "head_dim", None) or config.hidden_size // self.heads
        self.attn_scale = getattr(attention, "scaling", self.head_dim ** -0.5)
        self.hidden, self.inter = config.hidden_size, config.intermediate_size
        with torch.no_grad():
            self._keep = []  # every tensor a C pointer refers to
            layers = (_Layer * len(model.model.layers))()
            self.packed: list[PackedLinear] = []
            for i, block in enumerate(model.model.layers):
                linears = [PackedLinear(getattr(getattr(block, part), f"{name}_proj").weight) for part, name in PROJECTIONS]
                self.packed += linears
                norms = [self._hold(block.input_layernorm.weight), self._hold(block.post_attention_layernorm.weight)]
                layers[i] = _Layer(_ptr(norms[0]), _ptr(norms[1]), *[linear.struct() for linear in linears])
            self.head = PackedLinear(model.lm_head.weight)
            self.layers = layers
            self.struct = _Model(
                self.hidden, self.inter, len(layers), self.heads, self.kv_heads, self.head_dim,
                model.lm_head.weight.shape[0], 0, float(config.rms_norm_eps), self.attn_scale,
                _ptr(self._hold(model.model.rotary_emb.inv_freq.float())),
                _ptr(self._hold(model.get_input_embeddings().weight)),
                _ptr(self._hold(model.model.norm.weight)),
                self.head.struct(), ctypes.cast(layers, ctypes.POINTER(_Layer)), None, None)
        self.cache_len = 0
        self.scratch = None
        _trim_heap()  # the packing's temporaries
        self._adapters: dict[str, tuple[list, ctypes.Array]] = {}
        """Per LoRA adapter: (its A and B tensors, the layer structs that add them)."""

    def _hold(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().float().contiguous()
        self._keep.append(tensor)
        return tensor

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one token reads (packed linear layers and head; norms are negligible)."""
        return sum(p.nbytes for p in self.packed) + self.head.nbytes

    def _buffers(self, need: int) -> None:
        """Fresh KV and scratch buffers for `need` positions (rounded up to a multiple of
        CACHE_STEP), made per request and dropped after it (`release`), so a long conversation's
        cache does not stay resident between requests."""
        size = min(-(-need // CACHE_STEP) * CACHE_STEP, self.max_len)
        shape = (len(self.layers), self.kv_heads, size, self.head_dim)
        self.k_cache, self.v_cache = torch.empty(shape), torch.empty(shape)  # only written positions are read
        sizes = dict(x=self.hidden, xn=self.hidden, q=self.heads * self.head_dim, att=self.heads * self.head_dim,
                     k=self.kv_heads * self.head_dim, v=self.kv_heads * self.head_dim, gate=self.inter, up=self.inter,
                     scores=self.heads * size, logits=self.struct.vocab,
                     sums=max(self.hidden, self.inter, self.heads * self.head_dim) // GROUP + 1)
        self.scratch_tensors = {name: torch.zeros(n) for name, n in sizes.items()}
        self.scratch = _Scratch(**{name: _ptr(t) for name, t in self.scratch_tensors.items()})
        self.struct.max_len = size
        self.struct.k_cache, self.struct.v_cache = _ptr(self.k_cache), _ptr(self.v_cache)
        self.cache_len = size

    def release(self) -> None:
        """Drop the KV buffers (the next `start` makes new ones); `logits` stays readable."""
        self.struct.k_cache = self.struct.v_cache = None
        self.k_cache = self.v_cache = None
        self.cache_len = 0
        _trim_heap()

    def adapter_problem(self, model: nn.Module, adapter: str | None) -> str:
        """Why this decoder cannot answer for `adapter` (None: the base) on `model`, or "".

        `model` is what the generator serves: this decoder's model, or a PeftModel wrapped around it
        whose adapters were loaded after this decoder was built.
        """
        try:
            self._layers_for(model, adapter)
        except NativeUnavailable as error:
            return str(error)
        return ""

    def _layers_for(self, model: nn.Module, adapter: str | None) -> ctypes.Array:
        """The layer structs that answer for `adapter` on `model`; raises NativeUnavailable."""
        from peft import PeftModel

        if isinstance(model, PeftModel):
            if model.base_model.model is not self.model:
                raise NativeUnavailable("the adapters sit on another model")
        elif model is not self.model:
            raise NativeUnavailable("the generator's model is not this decoder's")
        return self.layers if adapter is None else self._adapter_layers(adapter)

    def _adapter_layers(self, adapter: str) -> ctypes.Array:
        """Layer structs that add `adapter`'s LoRA updates to the packed base weights (cached while
        the adapter's tensors stay the same; a detached and reloaded adapter gets new ones)."""
        from peft.tuners.lora import LoraLayer

        blocks = self.model.model.layers
        found, tensors = [], []
        for i, block in enumerate(blocks):
            for slot, (part, name) in enumerate(PROJECTIONS):
                module = getattr(getattr(block, part), f"{name}_proj")
                if isinstance(module, LoraLayer) and adapter in module.lora_A:
                    found.append((i, slot, module))
                    tensors += [module.lora_A[adapter].weight, module.lora_B[adapter].weight]
        if not found:
            raise NativeUnavailable(f"adapter '{adapter}' is not loaded on the block linear layers")
        cached = self._adapters.get(adapter)
        if cached and len(cached[0]) == len(tensors) and all(x is y for x, y in zip(cached[0], tensors)):
            return cached[1]  # the checks below passed when it was built, for these very tensors
        targets = sum(1 for module in self.model.modules() if isinstance(module, LoraLayer)
                      and (adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {})))
        if targets != len(found):
            raise NativeUnavailable(f"adapter '{adapter}' adapts layers besides the blocks' linear ones")
        layers = (_Layer * len(blocks))()
        ctypes.memmove(layers, self.layers, ctypes.sizeof(layers))
        for i, slot, module in found:
            a, b = module.lora_A[adapter], module.lora_B[adapter]
            if getattr(module, "use_dora", {}).get(adapter) or getattr(module, "lora_bias", {}).get(adapter):
                raise NativeUnavailable(f"adapter '{adapter}' uses DoRA or LoRA biases")
            if type(a) is not nn.Linear or type(b) is not nn.Linear or a.weight.shape[0] > MAX_RANK:
                raise NativeUnavailable(f"adapter '{adapter}' is not a plain LoRA of rank up to {MAX_RANK}")
            linear = getattr(layers[i], PROJECTIONS[slot][1])
            linear.rank, linear.lora_scale = a.weight.shape[0], float(module.scaling[adapter])
            linear.lora_a, linear.lora_b = _ptr(_dense(a.weight)), _ptr(_dense(b.weight))
        self._adapters[adapter] = (tensors, layers)  # holds the tensors the structs point into
        return layers

    def start(self, input_ids: torch.Tensor, max_new_tokens: int, adapter: str | None = None,
              model: nn.Module | None = None) -> int:
        """Run the prompt through transformers (as `generate` does), copy its KV cache here and
        return the first new token; `step` continues from there.

        `adapter` names a LoRA adapter resident on `model` (see `adapter_problem`); None is the base.
        """
        from transformers import DynamicCache

        if input_ids.shape[0] != 1:
            raise ValueError(f"the native decoder decodes one sequence at a time, not {input_ids.shape[0]}")
        length = input_ids.shape[1]
        if length + max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({length}) plus max_new_tokens ({max_new_tokens}) exceeds max_len {self.max_len}")
        model = model if model is not None else self.model
        resident = getattr(model, "peft_config", {})
        for gone in [name for name in self._adapters if name not in resident]:
            del self._adapters[gone]  # a detached adapter's tensors are not kept alive here
        try:
            layers = self._layers_for(model, adapter)
        except NativeUnavailable as error:
            raise ValueError(str(error)) from error
        self.struct.layer = ctypes.cast(layers, ctypes.POINTER(_Layer))
        extra = {"adapter_names": [adapter or PEFT_BASE]} if model is not self.model else {}
        self._buffers(length + max_new_tokens)
        with torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            logits = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1, **extra).logits
            for i, layer in enumerate(cache.layers):
                self.k_cache[i, :, :length] = layer.keys[0]
                self.v_cache[i, :, :length] = layer.values[0]
        return int(logits[0, -1].argmax())

    def step(self, token: int, position: int) -> int:
        """Feed `token` at `position` (after `start`); the next greedy token. Its logits stay in `logits`."""
        if not 0 <= position < self.cache_len:
            raise ValueError(f"position {position} is outside the KV buffer of {self.cache_len}")
        if not 0 <= token < self.struct.vocab:
            raise ValueError(f"token id {token} is outside the vocabulary of {self.struct.vocab}")
        return self.lib.icl_step(ctypes.byref(self.struct), ctypes.byref(self.scratch), token, position, self.threads)

    @property
    def logits(self) -> torch.Tensor:
        return self.scratch_tensors["logits"]

    def tokens(self, input_ids: torch.Tensor, max_new_tokens: int, eos_ids: set[int], adapter: str | None = None,
               model: nn.Module | None = None) -> Iterator[int]:
        """Yield new token ids one at a time, the end-of-turn token included; stop when the caller stops."""
        token = self.start(input_ids, max_new_tokens, adapter, model)
        length = input_ids.shape[1]
        try:
            for produced in range(1, max_new_tokens + 1):
                yield token
                if token in eos_ids or produced == max_new_tokens:
                    return
                token = self.step(token, length + produced - 1)
        finally:
            self.release()

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_ids: set[int], adapter: str | None = None,
                 model: nn.Module | None = None) -> torch.Tensor:
        """Prompt and answer ids (1, length), like `model.generate` with greedy decoding."""
        new = list(self.tokens(input_ids, max_new_tokens, eos_ids, adapter, model))
        return torch.cat([input_ids, torch.tensor([new], dtype=input_ids.dtype)], dim=1)
