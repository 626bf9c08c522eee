"""`bench.step_profile` groups a profiled step's time by kind of work, on the CPU here."""

from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

from bench.step_profile import GROUPS, OTHER, group_of, profile_steps, self_times

KERNELS = {  # kernel names as the profiler reports them on Hopper GPUs, and operator names on the CPU
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_segment_k_off"
    "_kernel__5x_cublas": "matmul",
    "nvjet_tst_256x128_64x4_2x1_v_bz_coopA_TNT": "matmul",
    "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>(Params)": "matmul",
    "void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, true, false, false>(cublasSplitKParams<float>)":
        "matmul",
    "triton_tem_fused_mm_3": "matmul",
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>>":
        "attention",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x128x128_4x1x1_kernel0_0": "attention",
    "fmha_cutlassB_bf16_aligned_64x64_k128_sm80": "attention",
    "triton_poi_fused__scaled_dot_product_efficient_attention_0": "compiled",
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::FusedAdamMathFunctor>": "optimizer",
    "triton_poi_fused__to_copy_add_mul_silu_0": "compiled",
    "triton_red_fused__to_copy_mean_pow_1": "compiled",
    "Memcpy HtoD (Pageable -> Device)": "copies",
    "Memset (Device)": "copies",
    "void at::native::bfloat16_copy_kernel_cuda(at::TensorIteratorBase&)": "copies",
    "void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous namespace)::OpaqueType<2u>>":
        "copies",
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>": "element-wise",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t>>": "element-wise",
    "aten::mm": "matmul",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::_foreach_add_": "optimizer",
    "aten::copy_": "copies",
    "aten::mul": "element-wise",
    "Torch-Compiled Region: 0/0": "compiled",
    "autograd::engine::evaluate_function: MmBackward0": OTHER,
}


@pytest.mark.parametrize("name, group", KERNELS.items())
def test_kernels_and_operators_fall_in_their_group(name, group):
    assert group_of(name) == group


def test_every_group_is_reachable():
    assert {group for group, _ in GROUPS} <= set(KERNELS.values())


@pytest.mark.parametrize("work, group", [
    (lambda x: x @ x, "matmul"),
    (lambda x: (x.exp() * 2).sigmoid(), "element-wise"),
])
def test_a_profiled_step_is_grouped_by_what_it_does(work, group):
    x = torch.randn(384, 384)
    profile = profile_steps(lambda batch: [work(x) for _ in range(batch)], [4, 4], "cpu",
                            matmul_flops_per_step=4 * 2 * 384**3)
    busy = sum(profile["groups_ms"].values())
    assert profile["groups_ms"][group] > 0.8 * busy, profile
    assert busy <= 1.01 * profile["step_ms"] and profile["note"] is None  # self times only: nothing counted twice
    if group == "matmul":  # 4 products of 2 x 384^3 FLOPs per step: a rate a CPU core can reach
        assert 1e-3 < profile["matmul_tflops"] < 10, profile


def test_train_gpu_profiles_a_step_on_request():
    from bench.train_gpu import Run, guarded

    result = guarded("tiny", "stock", Run(batch=2, seq=64, warmup=1, steps=2, device="cpu"), None, profile=True)
    groups = result.profile["groups_ms"]
    assert groups["matmul"] > 0 and groups["attention"] > 0 and groups["optimizer"] > 0, result.profile
    # shares are of the step as timed without the profiler
    assert result.profile["step_ms"] == pytest.approx(1e3 * 2 * 64 / result.tokens_per_s)
    assert guarded("tiny", "stock", Run(batch=2, seq=64, warmup=1, steps=1, device="cpu"), None).profile is None


def kernel(key: str, us: float, annotation: bool = False) -> SimpleNamespace:
    return SimpleNamespace(key=key, device_type=DeviceType.CUDA, is_user_annotation=annotation,
                           self_device_time_total=us)


def test_cuda_times_leave_out_the_annotated_ranges_around_kernels():
    """The optimizer's step and each compiled region come back as device events spanning their
    kernels too; counting them would count those kernels twice."""
    events = [kernel("nvjet_tst_256x128_64x4_2x1_v_bz_coopA_TNT", 700.0),
              kernel("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<>", 50.0),
              kernel("Optimizer.step#AdamW.step", 60.0, annotation=True),
              kernel("Torch-Compiled Region: 0/0", 900.0, annotation=True),
              SimpleNamespace(key="aten::mm", device_type=DeviceType.CPU, is_user_annotation=False,
                              self_device_time_total=700.0)]
    times = self_times(SimpleNamespace(key_averages=lambda: events), "cuda")
    assert times == {events[0].key: 700e-6, events[1].key: 50e-6}
    with pytest.raises(RuntimeError, match="no CUDA kernel"):
        self_times(SimpleNamespace(key_averages=lambda: events[2:]), "cuda")
