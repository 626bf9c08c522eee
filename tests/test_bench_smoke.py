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
    results = bench("train_gpu", "--tiny", "--variants", "stock", "chunked_ce", "checkpointing", "padded", "packed",
                    "qlora")
    rates = {r["variant"]: r["tokens_per_s"] for r in results}
    assert all(rates[v] > 0 for v in ("stock", "chunked_ce", "checkpointing", "padded", "packed"))
    if not torch.cuda.is_available():
        assert next(r for r in results if r["variant"] == "qlora")["note"].startswith("skipped")


def test_chunked_cross_entropy_equals_the_models_own_loss():
    from bench.train_gpu import Run, build_model, chunked_ce

    model = build_model("tiny", Run(device="cpu")).float()
    ids = torch.randint(1, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    ids[1, 30:] = 0
    labels = ids.masked_fill(ids == 0, -100)
    stock = model(input_ids=ids, labels=labels).loss
    stock.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    inner = model.get_base_model()
    chunked = chunked_ce(inner.model(input_ids=ids).last_hidden_state, inner.lm_head.weight, labels)
    chunked.backward()
    assert torch.allclose(chunked, stock, rtol=1e-5)
    assert all(torch.allclose(p.grad, expected[n], rtol=1e-4, atol=1e-6)
               for n, p in model.named_parameters() if p.requires_grad)


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
