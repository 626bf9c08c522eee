"""The benchmarks run and their outputs agree where they should; nothing here is timed.

The GPU training script runs on CPU with --tiny; the default-model benchmarks run in their
smallest modes, as integration tests.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, timeout: int = 900) -> dict | list:
    """Run `python -m bench ARGS --json` and return its parsed output."""
    done = subprocess.run([sys.executable, "-m", "bench", *args, "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_train_gpu_tiny_runs_every_variant_without_compile():
    variants = ["stock", "chunked_ce", "checkpointing", "padded", "packed", "qlora_stock", "qlora_chunked"]
    results = bench("train_gpu", "--tiny", "--variants", *variants)
    assert [r["variant"] for r in results] == variants
    assert all(r["tokens_per_s"] > 0 and r["note"] is None for r in results), results


def test_train_gpu_variants_build_what_they_name():
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    from bench.train_gpu import VARIANTS, Run, build_model, flops_per_token

    run = Run(device="cpu")
    stock, lean = build_model("tiny", run, VARIANTS["qlora_stock"]), build_model("tiny", run, VARIANTS["qlora_chunked"])
    for model in (stock, lean):
        assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 2 * 7
        # peft's bitsandbytes LoRA layer, the one `adapters.train --qlora` trains, wraps each of them
        assert sum(isinstance(m, LoraLinear4bit) for m in model.modules()) == 2 * 7
        assert flops_per_token(model, run.seq) == flops_per_token(build_model("tiny", run), run.seq)
    assert stock.get_input_embeddings().weight.dtype == torch.float32  # the recipe's upcast ...
    assert lean.get_input_embeddings().weight.dtype == torch.bfloat16  # ... which the lean variants skip
    assert stock.is_gradient_checkpointing and not lean.is_gradient_checkpointing


def test_checkpointing_every_other_block_keeps_loss_and_gradients():
    from bench.train_gpu import Run, Variant, build_model

    ids = torch.randint(1, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    grads = []
    for every, recomputed in ((0, [1, 1]), (2, [2, 1]), (1, [2, 2])):
        model = build_model("tiny", Run(device="cpu"), Variant(checkpoint_every=every)).float()
        calls = [0, 0]
        for index, block in enumerate(model.get_base_model().model.layers):
            block.self_attn.register_forward_pre_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert calls == recomputed  # a checkpointed block runs its forward again in the backward pass
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (reference, expected), *others = grads
    for loss, got in others:
        assert torch.equal(loss, reference)
        assert got.keys() == expected.keys() and all(torch.allclose(got[n], expected[n], atol=1e-7) for n in got)


def test_the_chunked_loss_variants_take_the_same_step_as_the_stock_loop():
    """The variants run the trainer's chunked loss (`adapters/speed.py`, tested there against the
    model's own) and the recomputing one it replaced; here: one step from the same weights gives
    the same loss and, through plain SGD with a learning rate of 1 (so each weight moves by its
    gradient), the same gradients."""
    from bench.train_gpu import VARIANTS, Run, build_model, make_batches, train_step

    run = Run(batch=2, seq=100, device="cpu")  # documents of 64..100 tokens, padded
    results = {}
    for name in ("stock", "chunked_ce", "chunked_ce_recompute"):
        model = build_model("tiny", run, VARIANTS[name]).float()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        (batch,) = make_batches(run, model.config.vocab_size, "padded", 1)
        loss = train_step(model, batch, optimizer, VARIANTS[name])
        results[name] = loss, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    stock_loss, stock = results.pop("stock")
    for loss, weights in results.values():
        assert loss == pytest.approx(stock_loss, rel=1e-6)
        assert weights.keys() == stock.keys()
        for name in stock:
            torch.testing.assert_close(weights[name], stock[name], rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_decode_quick_mode_matches_generate():
    result = bench("decode", "--steps", "generate", "static", "loop", "native", "native-lora", "generate-lora",
                   "native-bf16", "--tokens", "4", "--rounds", "1", "--no-llamacpp")
    assert len(result["steps"]) == 7
    assert [s["identical"] for s in result["steps"][3:]] == [True, True, None, True], "each native step checked"
    assert all(s["identical"] in (None, True) for s in result["steps"])  # None marks the reference itself
    assert result["ours_tok_s"] > 0 and result["floor_tok_s"] > 0 and result["llamacpp_tok_s"] is None


@pytest.mark.integration
def test_serve_quick_mode_batched_answers_equal_serial_ones():
    result = bench("serve", "--requests", "3", "--adapters", "3", "--tokens", "4", "--rounds", "1")
    assert result["identical"] is True and result["native_identical"] is True


@pytest.mark.integration
def test_train_quick_mode_runs():
    result = bench("train", "--batch", "1", "--seq", "16", "--steps", "1")
    assert all(rate > 0 for rate in result["tok_s"].values())


def test_compiled_variants_run_and_learn_like_their_eager_twins(monkeypatch):
    """The variants that compile are the likeliest to break on a GPU: run them here with the eager
    backend (dynamo traces the same graphs, in seconds) and compare their losses with the same
    variants uncompiled."""
    from dataclasses import replace

    import bench.train_gpu
    from bench.train_gpu import VARIANTS, Run, build_model, guarded

    real_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: real_compile(self, backend="eager"))
    run = Run(batch=2, seq=64, warmup=1, steps=2, device="cpu")
    dropouts = [m.lora_dropout["default"].p for m in build_model("tiny", run, VARIANTS["trainer_dropout"]).modules()
                if hasattr(m, "lora_dropout")]
    assert dropouts and set(dropouts) == {0.05}  # the variant below does train with dropout
    for name in ("compile_chunked_ce", "qlora_lean", "trainer_dropout"):
        compiled = guarded("tiny", name, run, None)
        monkeypatch.setitem(bench.train_gpu.VARIANTS, "eager", replace(VARIANTS[name], compile=False))
        eager = guarded("tiny", "eager", run, None)
        assert compiled.note is None and compiled.tokens_per_s > 0, compiled
        assert compiled.loss == pytest.approx(eager.loss, rel=1e-2)


def test_the_autotune_variant_compiles_each_block_in_its_mode(monkeypatch):
    from bench.train_gpu import VARIANTS, Run, build_model

    torch.compile(torch.nn.Linear(2, 2), mode=VARIANTS["trainer_autotune"].compile_mode)  # torch knows the mode
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: modes.append(kw.get("mode")))
    build_model("tiny", Run(device="cpu"), VARIANTS["trainer_autotune"])
    build_model("tiny", Run(device="cpu"), VARIANTS["trainer"])
    assert modes == ["max-autotune-no-cudagraphs"] * 2 + [None] * 2


def test_grad_check_tells_rounding_from_a_real_difference(monkeypatch):
    import bench.train_gpu
    from bench.grad_check import compare
    from bench.train_gpu import Run

    run = Run(batch=2, seq=64, device="cpu")
    rows = list(compare("tiny", ["chunked_ce", "chunked_ce_recompute", "trainer_recompute"], run))
    assert [(r["verdict"], r["baseline"]) for r in rows] == [("rounding", "stock")] * 2 + [("rounding", "autocast")]
    assert 0 < rows[0]["rel_error"] < 0.05  # bf16 against fp32: rounding, not nothing
    # a loss 5% too large gives gradients 5% too large: several times bf16's rounding
    real = bench.train_gpu.recomputed_chunked_loss
    monkeypatch.setattr(bench.train_gpu, "recomputed_chunked_loss", lambda *args: 1.05 * real(*args))
    (row,) = compare("tiny", ["chunked_ce_recompute"], run)
    assert row["verdict"] == "differs" and row["rel_error"] > 0.04, row
