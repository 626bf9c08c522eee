"""Build the model a LoRA run trains: the frozen base (optionally 4-bit) wrapped with fresh adapters.

The base comes from the same specs as the bot (`bot.models.resolve_model`: `default`, a folder,
a .gguf file, a hub id), so an adapter records the same base name the bot will later load it on.
This module builds and saves models; the training loop lives in `train.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters.config import ALL_LINEAR, TrainConfig


class QLoRAUnavailable(RuntimeError):
    """4-bit training was asked for where bitsandbytes or a CUDA GPU is missing."""


class IncompleteAdapter(RuntimeError):
    """The adapter file would miss trained tensors, so the run publishes nothing."""


@dataclass
class Base:
    model: object
    tokenizer: object
    name: str
    """Canonical base id, as `LoadedModel.name` reports it."""


def check_qlora() -> None:
    """Raise QLoRAUnavailable, saying what is missing, unless 4-bit NF4 training can run here."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise QLoRAUnavailable("--qlora needs a CUDA GPU; none is visible here (on the CPU, train plain LoRA)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QLoRAUnavailable("--qlora needs the bitsandbytes package: pip install bitsandbytes")


def is_sharded(state) -> bool:
    """Whether the run's engine (`accelerator.state`) splits the model across processes, so that no
    process holds the whole output head and every block."""
    from accelerate.utils import DistributedType

    return state.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)


def check_engine(state, config: TrainConfig) -> None:
    """Refuse the distributed set-ups the trainer cannot serve, before any model loads.

    `state` is the Accelerator's state (`accelerator.state`).
    """
    import os

    from accelerate.utils import DistributedType

    engine = state.distributed_type
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > state.num_processes:
        # accelerate falls back to independent single processes when the config's engine finds no
        # GPU: each would train the same adapter and publish it over the others'.
        raise ValueError(f"accelerate launch started {launched} processes, but accelerate runs each one alone "
                         "(the config's engine needs GPUs, and none is visible); on CPUs use "
                         "adapters/accelerate/multi_gpu.yaml with ACCELERATE_USE_CPU=1, or one process")
    if config.qlora and engine in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        # They flatten and shard every weight; bitsandbytes keeps packed uint8 weights beside fp32 ones.
        raise QLoRAUnavailable(
            f"--qlora does not run under {engine.value}; use one GPU or DDP "
            "(adapters/accelerate/multi_gpu.yaml), where each GPU holds the whole 4-bit base"
        )
    if is_sharded(state):
        for flag, asked in (("chunked-loss", config.chunked_loss), ("compile", config.compile)):
            if asked:  # both need the whole output head and blocks in every process
                raise ValueError(f"--{flag} does not run under {engine.value}, which shards the model; "
                                 f"use one GPU or DDP (adapters/accelerate/multi_gpu.yaml), or leave --{flag} out")
    if engine == DistributedType.FSDP and state.fsdp_plugin.fsdp_version != 2:
        # FSDP1 renames the layers it wraps, and peft then finds no LoRA weights in the state dict.
        raise ValueError("FSDP version 1 would write an empty adapter; set fsdp_version: 2 in the accelerate "
                         "config, as adapters/accelerate/fsdp.yaml does")
    if engine == DistributedType.DEEPSPEED and (config.save_every or config.resume):
        raise ValueError("--save-every and --resume do not run under DeepSpeed here; "
                         "use FSDP (adapters/accelerate/fsdp.yaml) or DDP for resumable runs")


def load_base(spec: str, qlora: bool, device: str, use_bf16: bool) -> Base:
    """Load the base model for training: fp32 on CPU, bf16 on a GPU that has it, NF4 with qlora.

    `device` is where this process trains (`Accelerator.device`): bitsandbytes quantizes the
    weights as they are placed there.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bot.models import dense_cache, resolve_model

    source = resolve_model(spec)
    path = str(dense_cache(source)) if source.gguf_file else source.path
    kwargs = {"dtype": torch.bfloat16 if use_bf16 else torch.float32}
    if qlora:
        kwargs.update(quantization_config=_nf4_config(), device_map={"": device})
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"model '{spec}' has no chat template; train on an instruction-tuned model")
    return Base(model=model, tokenizer=tokenizer, name=source.name)


def _nf4_config():
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=config.target_modules if config.target_modules == ALL_LINEAR else list(config.target_modules),
    )


def wrap(model, config: TrainConfig, base_name: str):
    """Freeze the base and add trainable LoRA weights (named "default", as PEFT saves them).

    A 4-bit base is wrapped like any other. The usual QLoRA recipe first runs peft's
    `prepare_model_for_kbit_training`, which upcasts every weight that is not 4-bit (embeddings,
    output head, norms) to fp32 and turns checkpointing on. Those weights are frozen and autocast
    multiplies in bf16 anyway, so the upcast only costs memory and time: on an H200 at the
    Qwen2.5-1.5B shape that recipe ran at 0.64x the stock bf16 LoRA loop, and NF4 without the
    upcast, with the trainer's chunked loss and compiled blocks, at 1.62x, with a peak of 18.9 GiB
    against bf16 LoRA's 48.3 (`bench train_gpu`, BENCHMARKS.md).
    """
    from peft import get_peft_model

    checkpointing = {"use_reentrant": False}  # the reentrant kind would need the inputs to require grads
    if config.gradient_checkpointing and hasattr(model, "activation_checkpointing_enable"):  # newer transformers
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    # PEFT records the folder the weights came from (for the default model, a local dequantized copy) in
    # adapter_config.json and the model card; the registry and the hub match on the canonical id.
    model.config._name_or_path = model.name_or_path = base_name
    peft_model = get_peft_model(model, lora_config(config))
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    peft_model.config.use_cache = False
    return peft_model


def save_weights(peft_model, folder, state_dict: dict | None = None) -> None:
    """Write adapter_config.json and adapter_model.safetensors into `folder`.

    `state_dict` is the gathered full state under FSDP / ZeRO-3 (`Accelerator.get_state_dict`);
    PEFT keeps only the adapter's entries from it. An adapter file that misses trained tensors
    (PEFT matches them by module names, which engines and compilers can change) is an error, so
    that a run never publishes an adapter that silently does nothing.
    """
    from safetensors import safe_open

    # Left at "auto", PEFT asks the hub whether the base's vocabulary grew (this trainer never resizes
    # it), and warns twice on every offline save; embeddings are saved only where LoRA targets them.
    from peft.utils.constants import EMBEDDING_LAYER_NAMES

    targets = set()
    for config in peft_model.peft_config.values():
        if isinstance(config.target_modules, (set, list, tuple)):  # a string is a pattern, such as "all-linear"
            targets |= set(config.target_modules)
    peft_model.save_pretrained(str(folder), safe_serialization=True, state_dict=state_dict,
                               save_embedding_layers="auto" if targets & set(EMBEDDING_LAYER_NAMES) else False)
    trained = sum(1 for parameter in peft_model.parameters() if parameter.requires_grad)
    with safe_open(str(Path(folder) / "adapter_model.safetensors"), "pt") as handle:
        saved = sum(1 for key in handle.keys() if ".lora_" in key)  # PEFT may add a layer it adapts, e.g. lm_head
    if saved < trained:
        raise IncompleteAdapter(f"the adapter file holds {saved} of the {trained} trained tensors; "
                                "PEFT did not recognise the rest, so no adapter was written")
