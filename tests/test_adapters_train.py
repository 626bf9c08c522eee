"""Training on the tiny model: what changes, what must not, round trips, resume and atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from servers import free_port
from test_adapters_support import PERSONA_ROWS, PROBE, load_tiny, logits, tiny_base, train_tiny, write_rows

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def setup(tmp_path):
    base = tiny_base(tmp_path / "base")
    data = write_rows(tmp_path / "data.jsonl", PERSONA_ROWS)
    return base, data, tmp_path / "adapters"


@pytest.fixture
def captured(monkeypatch):
    """Keep the PeftModel that `train` builds, to look at it after training."""
    import adapters.lora

    seen = {}
    real_wrap = adapters.lora.wrap

    def spy(model, config, base_name):
        seen["model"] = real_wrap(model, config, base_name)
        return seen["model"]

    monkeypatch.setattr(adapters.lora, "wrap", spy)
    return seen


def test_training_changes_lora_and_leaves_base_bit_identical(setup, captured):
    from safetensors.torch import load_file

    base, data, root = setup
    out = train_tiny(base, data, root / "persona")
    reference = load_file(Path(base) / "model.safetensors")
    trained = captured["model"].get_base_model().state_dict()
    base_keys = {k.replace(".base_layer", ""): v for k, v in trained.items() if "lora_" not in k}
    assert reference.keys() <= base_keys.keys()
    assert all(torch.equal(base_keys[key], value) for key, value in reference.items())
    lora = load_file(out / "adapter_model.safetensors")
    lora_b = [value for key, value in lora.items() if "lora_B" in key]
    assert lora_b and all(value.abs().sum() > 0 for value in lora_b)  # B starts at zero: all of them moved


def test_save_then_load_gives_the_same_logits(setup, captured):
    from peft import PeftModel

    base, data, root = setup
    out = train_tiny(base, data, root / "persona")
    trained = captured["model"].eval()
    fresh = PeftModel.from_pretrained(load_tiny(base).model, str(out)).eval()
    plain = load_tiny(base).model
    assert not torch.allclose(logits(plain, PROBE), logits(fresh, PROBE), atol=1e-3)  # sanity: it learned something
    torch.testing.assert_close(logits(fresh, PROBE), logits(trained, PROBE), rtol=0, atol=1e-6)


def test_output_folder_is_a_peft_adapter_with_metadata(setup):
    from adapters.metadata import AdapterMetadata, file_sha256

    base, data, root = setup
    out = train_tiny(base, data, root / "persona", eval_fraction=0.25)
    meta = AdapterMetadata.read(out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == meta.base_model == base
    assert meta.checksums == {"adapter_model.safetensors": file_sha256(out / "adapter_model.safetensors")}
    assert (meta.examples, meta.eval_examples, meta.steps) == (12, 4, 8)
    assert meta.data_sha256 == file_sha256(data) and meta.eval_loss is not None and meta.final_loss is not None
    assert "im_start" in meta.chat_template and len(meta.base_fingerprint) == 16
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert sorted(p.name for p in root.iterdir()) == ["persona"]  # no checkpoints or partial folders left


def crash_at_step(monkeypatch, step: int, *train_args, **train_options) -> None:
    """Train until the loss of `step` is logged, then die as a crash would (checkpoints stay behind)."""
    import adapters.train

    real_log = adapters.train._log

    def crash(run, row):
        if row["step"] == step:
            raise KeyboardInterrupt("simulated crash")
        real_log(run, row)

    monkeypatch.setattr(adapters.train, "_log", crash)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(*train_args, **train_options)
    monkeypatch.setattr(adapters.train, "_log", real_log)


def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(setup, monkeypatch):
    import adapters.train
    from safetensors.torch import load_file

    base, data, root = setup
    straight = train_tiny(base, data, root / "straight", max_steps=6, save_every=2)
    crash_at_step(monkeypatch, 5, base, data, root / "resumed", max_steps=6, save_every=2)
    assert not (root / "resumed").exists()
    resumed = train_tiny(base, data, root / "resumed", max_steps=6, save_every=2, resume=True)

    log = [json.loads(line)["step"] for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_without_checkpoint_is_refused(setup):
    base, data, root = setup
    with pytest.raises(FileNotFoundError, match="no checkpoint of 'persona'"):
        train_tiny(base, data, root / "persona", resume=True)


def test_crash_while_saving_keeps_the_old_adapter_loadable(setup, monkeypatch):
    import adapters.lora
    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry

    base, data, root = setup
    old = train_tiny(base, data, root / "persona")
    old_bytes = (old / "adapter_model.safetensors").read_bytes()

    def half_save(peft_model, folder, state_dict=None):
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(adapters.lora, "save_weights", half_save)
    with pytest.raises(OSError, match="disk full"):
        train_tiny(base, data, root / "persona", learning_rate=1e-1)
    assert (old / "adapter_model.safetensors").read_bytes() == old_bytes
    assert [p.name for p in root.iterdir() if p.name.startswith(".partial")] == []
    registry = AdapterRegistry(root)
    assert registry.names() == ["persona"]
    import threading

    assert AdapterHost(load_tiny(base), threading.Lock(), registry).attach("persona") == "persona"


def test_gradient_checkpointing_recomputes_blocks_and_trains_the_same_adapter(setup, monkeypatch):
    from safetensors.torch import load_file

    import adapters.lora

    base, data, root = setup
    real_wrap = adapters.lora.wrap
    attention_calls = []

    def counting(model, config, base_name):
        peft_model = real_wrap(model, config, base_name)
        attention_calls.append(0)
        attention = peft_model.get_base_model().model.layers[0].self_attn
        attention.register_forward_pre_hook(lambda *_: attention_calls.__setitem__(-1, attention_calls[-1] + 1))
        return peft_model

    monkeypatch.setattr(adapters.lora, "wrap", counting)
    plain = train_tiny(base, data, root / "plain", max_steps=3)
    checkpointed = train_tiny(base, data, root / "checkpointed", max_steps=3, gradient_checkpointing=True)
    assert attention_calls == [3, 6]  # each of the 3 steps runs the first block again in its backward pass
    expected, got = (load_file(folder / "adapter_model.safetensors") for folder in (plain, checkpointed))
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)


def test_bf16_base_as_on_a_gpu_trains_fp32_adapter_weights_that_serve_on_the_fp32_base(setup, captured, monkeypatch):
    """A GPU run loads the frozen base in bf16 (`bf16_base`); here the CPU takes that path."""
    from safetensors.torch import load_file

    import adapters.train
    from adapters.host import AdapterHost

    base, data, root = setup
    monkeypatch.setattr(adapters.train, "bf16_base", lambda: True)
    out = train_tiny(base, data, root / "bf16", precision="bf16")
    model = captured["model"]
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}  # peft keeps the adapter in fp32
    assert {t.dtype for t in load_file(out / "adapter_model.safetensors").values()} == {torch.float32}

    dense = load_tiny(base)  # fp32: the registry must accept an adapter fingerprinted on a bf16 load
    plain = logits(dense.model, PROBE)
    name = AdapterHost(dense, threading.Lock()).attach_path(out)
    assert not torch.allclose(plain, logits(dense.model, PROBE, adapter=name), atol=1e-3)


def test_qlora_without_cuda_is_a_clear_error(setup):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from adapters.lora import QLoRAUnavailable

    base, data, root = setup
    with pytest.raises(QLoRAUnavailable, match="needs a CUDA GPU"):
        train_tiny(base, data, root / "persona", qlora=True)


def test_qlora_trains_through_nf4_layers_and_serves_on_the_dense_base(tmp_path, monkeypatch):
    """QLoRA's path on bitsandbytes' CPU kernels (the CUDA check lifted): the base is NF4, its packed
    weights do not change, the adapter reloads onto a fresh NF4 base with the same logits, and the
    registry accepts it for the full-precision base it was quantized from."""
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import adapters.lora
    from adapters.host import AdapterHost
    from adapters.lora import _nf4_config
    from tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()  # NF4 packs blocks of 64 inputs: a hidden size of 64
    tiny_model(tokenizer, seed=0, hidden=64).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base = str(tmp_path / "base")
    data = write_rows(tmp_path / "data.jsonl", PERSONA_ROWS)
    monkeypatch.setattr(adapters.lora, "check_qlora", lambda: None)
    seen = {}
    real_wrap = adapters.lora.wrap

    def spy(model, config, base_name):
        seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["model"] = real_wrap(model, config, base_name)
        return seen["model"]

    monkeypatch.setattr(adapters.lora, "wrap", spy)
    out = train_tiny(base, data, tmp_path / "qlora", qlora=True, gradient_checkpointing=True)

    trained = seen["model"].eval()
    assert trained.is_gradient_checkpointing
    layers = [m for m in trained.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7 and all(layer.weight.dtype == torch.uint8 for layer in layers)
    after = {k.replace(".base_layer", ""): v for k, v in trained.get_base_model().state_dict().items() if "lora_" not in k}
    assert seen["before"].keys() <= after.keys()
    assert all(torch.equal(after[key], value) for key, value in seen["before"].items())

    nf4 = AutoModelForCausalLM.from_pretrained(base, quantization_config=_nf4_config(), device_map={"": "cpu"},
                                               dtype=torch.float32)
    fresh = PeftModel.from_pretrained(nf4, str(out)).eval()
    torch.testing.assert_close(logits(fresh, PROBE), logits(trained, PROBE), rtol=0, atol=1e-5)

    dense = load_tiny(base)
    plain = logits(dense.model, PROBE)
    name = AdapterHost(dense, threading.Lock()).attach_path(out)  # vetted: base id and fingerprint match
    served = logits(dense.model, PROBE, adapter=name)
    with fresh.disable_adapter():
        nf4_plain = logits(fresh, PROBE)
    # The adapter moves the dense base's logits the way it moves the NF4 base's (0.94 measured; an
    # unrelated change would be near 0), and by more than quantization itself moved them.
    on_dense, on_nf4 = (served - plain).flatten(), (logits(fresh, PROBE) - nf4_plain).flatten()
    assert torch.nn.functional.cosine_similarity(on_dense, on_nf4, dim=0) > 0.8
    assert on_dense.norm() > (plain - nf4_plain).norm()


def test_qlora_under_fsdp_or_deepspeed_is_refused_by_name():
    from accelerate.utils import DistributedType

    from adapters.lora import QLoRAUnavailable, check_qlora_engine

    for engine in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        check_qlora_engine(engine)
    for engine in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(QLoRAUnavailable, match=f"does not run under {engine.value}; use one GPU or DDP"):
            check_qlora_engine(engine)


def test_train_cli_end_to_end(setup):
    base, data, root = setup
    command = [sys.executable, "-m", "adapters.train", "--data", str(data), "--out", str(root / "cli"), "--model", base,
               "--max-steps", "2", "--rank", "4", "--max-length", "32", "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "adapter written" in done.stdout and (root / "cli" / "adapter_metadata.json").is_file()
    bad = subprocess.run(command[:-1] + ["--rank", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "rank must be a whole number of at least 1" in bad.stderr


def test_in_process_runs_may_change_precision(setup):
    base, data, root = setup
    first = train_tiny(base, data, root / "fp32", max_steps=1, precision="fp32")
    second = train_tiny(base, data, root / "bf16", max_steps=1, precision="bf16")
    assert first.is_dir() and second.is_dir()


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_precision_is_bf16_where_the_hardware_has_it(setup, monkeypatch, native_bf16):
    import accelerate

    import adapters.train

    base, data, root = setup
    monkeypatch.setattr(adapters.train, "cpu_bf16", lambda: native_bf16)
    asked = []

    class Spy(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            asked.append(kwargs["mixed_precision"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(accelerate, "Accelerator", Spy)
    train_tiny(base, data, root / "auto", max_steps=1, precision="auto")
    assert asked == ["bf16" if native_bf16 else "no"]


def test_accelerate_launch_ddp_equals_one_process_with_gradient_accumulation(setup):
    """The shipped multi-GPU config, run on CPU (gloo): two processes of batch 2 take the same steps as
    one process of batch 2 accumulating 2 micro-batches, so the adapters are equal."""
    from safetensors.torch import load_file

    from adapters.metadata import AdapterMetadata

    base, _, root = setup
    data = write_rows(root.parent / "varied.jsonl",
                      [{"input": f"question {i}", "output": "zebra quokka " * (1 + i % 5)} for i in range(16)])
    options = dict(rank=4, alpha=8.0, dropout=0.0, learning_rate=3e-2, max_steps=3, batch_size=2, max_length=64,
                   eval_fraction=0.25, seed=0, precision="fp32")
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "adapters/accelerate/multi_gpu.yaml"), "--num_processes", "2", "--mixed_precision", "no",
               "--main_process_port", str(free_port()), "-m", "adapters.train", "--data", str(data),
               "--out", str(root / "ddp"), "--model", base, "--no-progress", *flags]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ACCELERATE_USE_CPU": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("adapter written") == 1  # the main process reports, the other one does not

    accumulated = train_tiny(base, data, root / "accumulated", grad_accum=2, **options)
    alone = train_tiny(base, data, root / "alone", grad_accum=1, **options)
    ddp, reference, one_batch = (load_file(folder / "adapter_model.safetensors")
                                 for folder in (root / "ddp", accumulated, alone))
    assert any(not torch.equal(one_batch[key], reference[key]) for key in reference)  # sanity: batch size matters
    assert ddp.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(ddp[key], reference[key], rtol=0, atol=1e-6)
    ddp_meta, reference_meta = AdapterMetadata.read(root / "ddp"), AdapterMetadata.read(accumulated)
    assert (ddp_meta.steps, ddp_meta.examples, ddp_meta.eval_examples) == (3, 12, 4)
    assert ddp_meta.eval_loss == pytest.approx(reference_meta.eval_loss, abs=1e-6)
    assert ddp_meta.final_loss == pytest.approx(reference_meta.final_loss, abs=1e-6)


def test_output_that_is_not_an_adapter_is_refused_before_training_and_kept(setup, monkeypatch):
    import adapters.train

    base, data, root = setup
    precious = root / "notes"
    (precious / "sub").mkdir(parents=True)
    (precious / "thesis.txt").write_text("years of work")
    monkeypatch.setattr(adapters.train, "_train", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(ValueError, match="already holds files and is not an adapter, so writing there would delete"):
        train_tiny(base, data, precious)
    assert (precious / "thesis.txt").read_text() == "years of work" and (precious / "sub").is_dir()
    (root / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        train_tiny(base, data, root / "afile")
    monkeypatch.undo()
    (root / "empty").mkdir()
    assert train_tiny(base, data, root / "empty", max_steps=1) == root / "empty"  # an empty folder may be filled
    assert train_tiny(base, data, root / "empty", max_steps=1) == root / "empty"  # and an adapter replaced


@pytest.mark.parametrize(("flags", "message"), [
    (["--name", ""], "adapter name '' is not a valid adapter name"),
    (["--name", "../../etc"], "adapter name '../../etc' is not a valid adapter name"),
    (["--name", "a/b"], "adapter name 'a/b' is not a valid adapter name"),
    (["--name", "base"], "adapter name 'base' is reserved"),
    (["--out", ""], "output must name the adapter folder"),
])
def test_cli_refuses_names_that_are_paths_or_reserved(setup, tmp_path, monkeypatch, capsys, flags, message):
    from adapters.train import build_parser, main

    base, data, _ = setup
    adapters_home = tmp_path / "home"
    (adapters_home / "kept").mkdir(parents=True)
    monkeypatch.setenv("ICL_BOT_ADAPTERS", str(adapters_home))
    assert main(build_parser().parse_args(["--data", str(data), "--model", base, *flags])) == 2
    assert message in capsys.readouterr().err
    assert (adapters_home / "kept").is_dir() and not (tmp_path / "etc").exists()


def test_resume_with_other_options_or_data_is_refused_by_name(setup, monkeypatch):
    base, data, root = setup
    crash_at_step(monkeypatch, 3, base, data, root / "run", max_steps=6, save_every=2)
    with pytest.raises(ValueError, match=r"made with batch_size=4, but this run has batch_size=2"):
        train_tiny(base, data, root / "run", max_steps=6, save_every=2, resume=True, batch_size=2)
    data.write_text(data.read_text() + json.dumps({"input": "one more", "output": "row"}) + "\n")
    with pytest.raises(ValueError, match=r"made with data_sha256="):
        train_tiny(base, data, root / "run", max_steps=6, save_every=2, resume=True)
    assert not (root / "run").exists()  # refusals wrote nothing


def test_ctrl_c_during_training_is_one_line_and_keeps_the_old_adapter(setup):
    import signal
    import time

    from adapters.metadata import file_sha256

    base, data, root = setup
    old = train_tiny(base, data, root / "kept", max_steps=1)
    before = file_sha256(old / "adapter_model.safetensors")
    command = [sys.executable, "-m", "adapters.train", "--data", str(data), "--out", str(old), "--model", base,
               "--max-steps", "100000", "--rank", "4", "--max-length", "32", "--no-progress", "--precision", "fp32"]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = root / ".kept.run" / "train_log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text()) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted: no adapter written" in stderr
    assert file_sha256(old / "adapter_model.safetensors") == before
