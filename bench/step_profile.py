"""Where a training step's time goes: the profiler's kernel times, grouped by kind.

`python -m bench train_gpu --profile` runs two more steps of each variant under `torch.profiler`
and reports, per step, the milliseconds of matrix products, attention, compiled (Triton) kernels,
eager element-wise work, the optimizer and copies, and the time the GPU had no kernel running
(launch overhead and host-side work: what CUDA graphs would remove). It is the map for the next
speed-up, not a benchmark: the profiler slows the host side down, so the idle time is taken
against the step time measured without it, where that is given.

On a CUDA GPU the groups are built from the kernels that ran; on the CPU (`--tiny`) from the
aten operators' own times, so the same command can be checked without a GPU.
"""

from __future__ import annotations

import time

GROUPS = (  # (group, fragments of a lower-case kernel or operator name); the first match wins
    ("matmul", ("triton_tem",)),
    ("compiled", ("triton", "torch-compiled region", "compiledfunction")),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("matmul", ("gemm", "gemv", "nvjet", "cutlass", "xmma", "cublas", "splitkreduce", "aten::mm", "aten::addmm",
                "aten::bmm", "aten::baddbmm")),
    ("optimizer", ("multi_tensor_apply", "adam", "_foreach")),
    ("copies", ("memcpy", "memset", "copy_kernel", "catarraybatchedcopy", "aten::copy_", "aten::_to_copy",
                "aten::cat")),
    ("element-wise", ("elementwise", "vectorized", "reduce", "softmax", "at::native", "aten::")),
)
"""Matrix products are cuBLAS's (gemm, gemv, nvjet, cutlass, xmma kernels and its split-K reductions)
or Triton templates (`triton_tem`, under max-autotune). Other Triton kernels are what `torch.compile`
fused, whatever they are named after (a fused kernel may carry an attention op's name); on the CPU
its C++ kernels run inside the compiled region's own time. Attention comes before the matrix
products because flash attention's kernel names also name cutlass."""
OTHER = "other"


def group_of(name: str) -> str:
    """The group of a kernel or operator name (`GROUPS`), or `other`."""
    lowered = name.lower()
    return next((group for group, fragments in GROUPS if any(f in lowered for f in fragments)), OTHER)


def grouped(times: dict[str, float]) -> dict[str, float]:
    """Sum self times by group; every group of `GROUPS` and `other` appears, in that order (once)."""
    totals = dict.fromkeys([*(group for group, _ in GROUPS), OTHER], 0.0)
    for name, seconds in times.items():
        totals[group_of(name)] += seconds
    return totals


def self_times(prof, device: str) -> dict[str, float]:
    """Seconds per kernel name (CUDA) or per operator (CPU), self time only, so nothing counts twice.

    On CUDA, the ranges that code marks with `record_function` (the optimizer's step, each compiled
    region) also come back as device events spanning the kernels inside them: they are left out,
    as the profiler's own table leaves them out."""
    from torch.autograd import DeviceType

    if device == "cuda":
        times = {e.key: e.self_device_time_total / 1e6 for e in prof.key_averages()
                 if e.device_type == DeviceType.CUDA and not e.is_user_annotation and e.self_device_time_total > 0}
        if not times:
            raise RuntimeError("the profiler recorded no CUDA kernel (is CUPTI available to this process?)")
        return times
    return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages() if e.self_cpu_time_total > 0}


def profile_steps(step, batches: list, device: str, matmul_flops_per_step: float,
                  timed_step_ms: float | None = None) -> dict:
    """Run `step(batch)` on each batch under the profiler; per-step milliseconds by group.

    `matmul_flops_per_step`: the model's matrix-product FLOPs in one step, for the rate the
    matmul group reached (`matmul_tflops`). `idle_ms` is the step's time not covered by kernels
    (on the CPU, by operators' self times: the Python and dispatch overhead), against
    `timed_step_ms` (the step measured without the profiler) when given, else the profiled one."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    groups = grouped(self_times(prof, device))
    per_step = {group: 1e3 * seconds / len(batches) for group, seconds in groups.items()}
    step_ms = timed_step_ms or 1e3 * wall / len(batches)
    matmul_s = groups["matmul"] / len(batches)
    busy = sum(per_step.values())
    return {
        "step_ms": step_ms,
        "profiled_step_ms": 1e3 * wall / len(batches),
        "groups_ms": per_step,
        "idle_ms": max(0.0, step_ms - busy),
        "matmul_tflops": matmul_flops_per_step / matmul_s / 1e12 if matmul_s else None,
        "note": f"the kernels add up to {busy / step_ms:.2f}x the step: some overlap, or count twice"
                if busy > 1.05 * step_ms else None,
    }


def summary(profile: dict) -> str:
    """One line: each group's share of the step."""
    step = profile["step_ms"]
    parts = [f"{group} {100 * ms / step:.0f}%" for group, ms in profile["groups_ms"].items() if ms >= 0.005 * step]
    parts.append(f"idle {100 * profile['idle_ms'] / step:.0f}%")
    rate = f", matmul at {profile['matmul_tflops']:.3g} TFLOP/s" if profile["matmul_tflops"] else ""
    note = f" ({profile['note']})" if profile["note"] else ""
    return f"step {step:.0f} ms: " + ", ".join(parts) + rate + note
