"""Run `adapters.train` under accelerate's FSDP or DeepSpeed engine on CPU processes, for the tests.

accelerate picks FSDP and DeepSpeed only for GPU-like devices; on CPU processes it falls back to
plain DDP (with ACCELERATE_USE_CPU) or to one process per rank that knows of no others (without).
torch's FSDP2 and DeepSpeed's ZeRO-3 themselves run on the CPU over gloo. This launcher lifts
exactly accelerate's device checks, so the trainer meets the same sharded parameters, meta-device
loading on the other ranks (the shipped configs' `cpu_ram_efficient_loading`), collective
state-dict gathering and checkpoints that it meets on GPUs; the device and the collective backend
differ, and so does speed.

    ACCELERATE_USE_CPU=1 accelerate launch --config_file adapters/accelerate/fsdp.yaml \
        --num_processes 2 --mixed_precision no tests/engines_on_cpu.py --data ... --out ...
    DS_ACCELERATOR=cpu accelerate launch --config_file adapters/accelerate/deepspeed_zero3.yaml \
        --num_processes 2 --mixed_precision no tests/engines_on_cpu.py --data ... --out ...

(FSDP wants ACCELERATE_USE_CPU set, DeepSpeed wants it unset.) With STOP_AFTER_STEP=N in the
environment, every process is interrupted after logging step N, as Ctrl-C would: the resume tests
use it. A process whose process group is still up when the interpreter exits says so on stderr.
QLORA_ON_CPU=1 lets --qlora run on bitsandbytes' CPU kernels. It is a test tool, not a way to train: on CPUs, DDP (`multi_gpu.yaml`) is the engine to use.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def fsdp_on_cpu() -> None:
    """Let accelerate build its FSDP plugin and engine for CPU processes (ACCELERATE_USE_CPU=1)."""
    import torch
    from accelerate.state import AcceleratorState, DistributedType
    from accelerate.utils import dataclasses

    plugin_init = dataclasses.FullyShardedDataParallelPlugin.__post_init__

    def post_init(self) -> None:
        # With sync_module_states, the plugin asks for the current accelerator device, to
        # materialise the weights that the other ranks loaded on the meta device; answer "cpu".
        saved = dataclasses.is_cuda_available, torch.cuda.current_device
        dataclasses.is_cuda_available, torch.cuda.current_device = (lambda: True), (lambda: "cpu")
        try:
            plugin_init(self)
        finally:
            dataclasses.is_cuda_available, torch.cuda.current_device = saved

    state_init = AcceleratorState.__init__

    def init(self, *args, **kwargs) -> None:
        # Every AcceleratorState() re-reads the process's type from PartialState, so promote each time.
        state_init(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin") or getattr(self, "fsdp_plugin", None)
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            if self.mixed_precision != "no" and getattr(self, "fsdp_plugin", None) is None:
                plugin.set_mixed_precision(self.mixed_precision)  # as accelerate does on GPUs
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, plugin
            self.device = torch.device("cpu")  # not "cpu:0", which FSDP takes for another device than "cpu"

    dataclasses.FullyShardedDataParallelPlugin.__post_init__ = post_init
    AcceleratorState.__init__ = init


def deepspeed_on_cpu() -> None:
    """Give accelerate the gloo process group that DeepSpeed's CPU accelerator uses (ACCELERATE_USE_CPU unset).

    Without a GPU, accelerate finds no backend and records one process of rank 0 on every rank,
    so DeepSpeed's batch-size check fails; with the group known, accelerate switches the run to
    DeepSpeed as it does on GPUs.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    prepare_backend = PartialState._prepare_backend

    def patched(self, cpu=False, sagemaker_dp=False, backend=None):
        found, engine = prepare_backend(self, cpu, sagemaker_dp, backend)
        if engine == DistributedType.NO and not cpu and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            return backend or "gloo", DistributedType.MULTI_CPU
        return found, engine

    PartialState._prepare_backend = patched
    # DeepSpeed compiles a shared-memory all-reduce (40-70 s) that only its inference engine uses.
    import deepspeed.comm.torch  # noqa: F401  (deepspeed.comm re-exports torch, so fetch the module itself)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def qlora_on_cpu() -> None:
    """Let --qlora train on bitsandbytes' CPU kernels, as the in-process QLoRA test does."""
    import adapters.lora

    adapters.lora.check_qlora = lambda: None


LEFT_UP = "process group left up at exit"
"""What a process prints when its process group outlives `main`: gloo's threads then exit with the
interpreter, which now and then aborts the process after a finished run."""


def report_process_group_at_exit() -> None:
    import atexit

    import torch.distributed

    def check() -> None:
        if torch.distributed.is_initialized():
            print(LEFT_UP, file=sys.stderr, flush=True)

    atexit.register(check)


def stop_after_step(step: int) -> None:
    import adapters.train

    log = adapters.train._log

    def logged(run, row: dict) -> None:
        log(run, row)
        if row["step"] == step:
            raise KeyboardInterrupt

    adapters.train._log = logged


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        fsdp_on_cpu()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        deepspeed_on_cpu()
    if os.environ.get("QLORA_ON_CPU"):
        qlora_on_cpu()
    report_process_group_at_exit()
    if os.environ.get("STOP_AFTER_STEP"):
        stop_after_step(int(os.environ["STOP_AFTER_STEP"]))
    from adapters.train import build_parser, main

    sys.exit(main(build_parser().parse_args()))
