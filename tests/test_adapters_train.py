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

from engines_on_cpu import LEFT_UP
from servers import run_on_free_port
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


def test_a_run_whose_loss_turns_nan_publishes_nothing_and_keeps_the_adapter_there(setup, monkeypatch):
    """It used to publish an adapter that answered every request with an empty string."""
    import adapters.train
    from adapters.metadata import file_sha256

    base, data, root = setup
    out = train_tiny(base, data, root / "persona", max_steps=2)
    before = file_sha256(out / "adapter_model.safetensors")
    real, calls = adapters.train.model_loss, []

    def diverging(run, model, batch):
        calls.append(1)
        loss = real(run, model, batch)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(adapters.train, "model_loss", diverging)
    # caught at the gradient, before the optimizer step spreads the NaN into the weights
    with pytest.raises(ValueError, match="training diverged: the gradient is nan at step 3, so no adapter is written"):
        train_tiny(base, data, out, max_steps=6)
    assert file_sha256(out / "adapter_model.safetensors") == before


def test_a_base_typed_as_a_relative_path_is_the_base_typed_whole(setup, monkeypatch):
    """An adapter trained with `--model tiny` was refused by `--model /work/tiny` ("trained on base
    model 'tiny'"), and a run could not resume under the other spelling."""
    from adapters.config import TrainConfig
    from adapters.metadata import AdapterMetadata
    from adapters.train import run_identity

    base, data, root = setup
    monkeypatch.chdir(Path(base).parent)
    out = train_tiny(f"{Path(base).name}/", data, root / "relative", max_steps=1)
    assert AdapterMetadata.read(out).base_model == base
    spelled = [TrainConfig(data=str(data), output=str(root / "x"), model=model) for model in (base, "./base", "base/")]
    assert len({run_identity(config)["model"] for config in spelled}) == 1


def test_a_second_run_under_a_name_in_training_stops_before_touching_its_files(setup):
    """It used to clear the first run's checkpoints and mix both loss logs; the first then died."""
    from adapters.checkpoint import run_dir, run_lock
    from adapters.registry import AdapterRegistry

    base, data, root = setup
    out = train_tiny(base, data, root / "persona", max_steps=2, save_every=1)
    step = run_dir(out) / "step-000001"
    step.mkdir(parents=True)
    (step / "state.pt").write_bytes(b"the first run's step")
    listed = AdapterRegistry(root).passed_over()
    assert listed == [".persona.run: an interrupted training run, checkpoint at step 1 (--resume continues it, "
                      "--restart discards it)"]
    with run_lock(out):  # the first run, still going
        with pytest.raises(ValueError, match=f"another training run is writing 'persona' \\(process {os.getpid()}\\); "
                                             "wait for it to end, or choose another name"):
            train_tiny(base, data, out, max_steps=2, restart=True)
        assert AdapterRegistry(root).passed_over() == [".persona.run: a training run in progress, checkpoint at step 1"]
    assert (step / "state.pt").read_bytes() == b"the first run's step"
    assert train_tiny(base, data, out, max_steps=2, restart=True) == out  # once it has ended, the name is free


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
    assert meta.checksums == {name: file_sha256(out / name) for name in ("adapter_model.safetensors",
                                                                         "adapter_config.json")}
    assert (meta.examples, meta.eval_examples, meta.steps) == (12, 4, 8)
    assert meta.data_sha256 == file_sha256(data) and meta.eval_loss is not None and meta.final_loss is not None
    assert "im_start" in meta.chat_template and len(meta.base_fingerprint) == 16 and len(meta.base_sample) == 256
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


def test_resume_after_a_kill_that_cut_a_log_line_short(setup, monkeypatch):
    """A run killed as it wrote its loss log leaves half a line; resuming drops it instead of failing on it."""
    from adapters import checkpoint
    from adapters.train import LOG_FILE, read_log

    base, data, root = setup
    crash_at_step(monkeypatch, 5, base, data, root / "torn", max_steps=6, save_every=2)
    with (checkpoint.run_dir(root / "torn") / LOG_FILE).open("a") as log:
        log.write('{"step": 5, "lo')
    resumed = train_tiny(base, data, root / "torn", max_steps=6, save_every=2, resume=True)
    assert [row["step"] for row in read_log(resumed / LOG_FILE)] == [1, 2, 3, 4, 5, 6]


def test_starting_again_over_an_interrupted_run_keeps_its_checkpoint_until_told(setup, monkeypatch):
    """The same command again (no --resume) used to delete the checkpoints; now it stops and says what to add."""
    from adapters import checkpoint

    base, data, root = setup
    straight = train_tiny(base, data, root / "straight", max_steps=6, save_every=2)
    crash_at_step(monkeypatch, 5, base, data, root / "run", max_steps=6, save_every=2)
    with pytest.raises(ValueError, match=r"an interrupted run of 'run' left a checkpoint at step 4 in .*\.run\.run; "
                                         r"add --resume to continue it, or --restart to discard it"):
        train_tiny(base, data, root / "run", max_steps=6, save_every=2)
    assert checkpoint.step_of(checkpoint.latest(root / "run")) == 4 and not (root / "run").exists()
    # the same run, its data and output written another way: the checkpoint resumes it
    resumed = train_tiny(base, Path(os.path.relpath(data)), Path(os.path.relpath(root / "run")), max_steps=6,
                         save_every=2, resume=True)
    assert_same_weights(straight, resumed)


def test_restart_discards_the_checkpoint_and_trains_from_step_zero(setup, monkeypatch):
    from adapters import checkpoint
    from adapters.train import LOG_FILE, read_log

    base, data, root = setup
    straight = train_tiny(base, data, root / "straight", max_steps=6, save_every=2)
    crash_at_step(monkeypatch, 5, base, data, root / "run", max_steps=6, save_every=2)
    with pytest.raises(ValueError, match="resume and restart exclude each other"):
        train_tiny(base, data, root / "run", max_steps=6, save_every=2, resume=True, restart=True)
    again = train_tiny(base, data, root / "run", max_steps=6, save_every=2, restart=True)
    assert [row["step"] for row in read_log(again / LOG_FILE)] == [1, 2, 3, 4, 5, 6]
    assert checkpoint.latest(root / "run") is None
    assert_same_weights(straight, again)


def assert_same_weights(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    first, second = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert first.keys() == second.keys() and all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)


def test_examples_that_max_length_cuts_are_counted_and_said(setup, capsys):
    """Against each conversation encoded whole: which lose every answer token, which lose some."""
    from adapters.data import load_conversations
    from adapters.encode import IGNORE, encode_conversation
    from adapters.metadata import AdapterMetadata
    from bot.models import load_tokenizer

    base, _, root = setup
    rows = [{"input": "q " * n, "output": "zebra quokka " * 4} for n in (1, 2, 3, 12, 14, 16, 30, 40)]
    data = write_rows(root.parent / "mixed.jsonl", rows)
    tokenizer, max_length = load_tokenizer(base), 40
    whole = [encode_conversation(tokenizer, messages, None) for messages in load_conversations(data)]
    trained = [(sum(label != IGNORE for label in e.labels[:max_length]), sum(label != IGNORE for label in e.labels))
               for e in whole]  # answer tokens within the limit, and in all
    dropped = sum(within == 0 for within, _ in trained)
    cut = sum(0 < within < total for within, total in trained)
    assert dropped and cut, "sanity check: the rows must exercise both"
    out = train_tiny(base, data, root / "cut", max_length=max_length, max_steps=2)
    assert AdapterMetadata.read(out).examples == len(rows) - dropped
    assert (f"note: of {len(rows)} training examples, {dropped} had no answer left within max_length={max_length} "
            f"and are left out, and {cut} were cut short; raise --max-length to keep them") in capsys.readouterr().err


def test_an_eval_split_that_leaves_nothing_to_train_says_so(setup):
    base, _, root = setup
    one = write_rows(root.parent / "one.jsonl", [{"input": "hi", "output": "there"}])
    with pytest.raises(ValueError, match="eval_fraction=0.5 holds out all 1 examples; none is left to train on"):
        train_tiny(base, one, root / "none", eval_fraction=0.5)


def test_the_model_card_names_the_base_by_its_id_not_the_folder_it_loaded_from(setup, tmp_path):
    """The default model loads from a dequantized copy whose folder records its hub id (source_name.txt)."""
    import shutil

    base, data, root = setup
    copy = tmp_path / "models" / "tiny.Q4_1-0123456789ab"
    shutil.copytree(base, copy)
    (copy / "source_name.txt").write_text("someone/tiny-chat\n")
    out = train_tiny(str(copy), data, root / "card", max_steps=1)
    card = (out / "README.md").read_text()
    assert "base_model: someone/tiny-chat" in card and str(copy) not in card
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "someone/tiny-chat"


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
    probe = 2  # before training, the chunked loss's check runs the model twice on a few tokens (speed.check_head)
    assert attention_calls == [3 + probe, 6 + probe]  # each of the 3 steps runs the first block again in its backward pass
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


def nf4_base(folder: Path) -> str:
    """A tiny Llama that NF4 can quantize (it packs blocks of 64 inputs: a hidden size of 64)."""
    from tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer, seed=0, hidden=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_qlora_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A 4-bit layer's state dict carries its quantization state besides the weight; a checkpoint
    keeps the adapter's weights only, so a QLoRA run resumes to the uninterrupted run's adapter."""
    from safetensors.torch import load_file

    import adapters.lora
    from adapters.checkpoint import STATE_FILE, latest

    base, data = nf4_base(tmp_path / "base"), write_rows(tmp_path / "data.jsonl", PERSONA_ROWS)
    monkeypatch.setattr(adapters.lora, "check_qlora", lambda: None)
    straight = train_tiny(base, data, tmp_path / "straight", max_steps=4, save_every=2, qlora=True)
    crash_at_step(monkeypatch, 3, base, data, tmp_path / "resumed", max_steps=4, save_every=2, qlora=True)
    saved = torch.load(latest(tmp_path / "resumed") / STATE_FILE, weights_only=True)["weights"]
    assert saved and all(".lora_" in name for name in saved)  # no absmax, quant_map, ... of the frozen base
    resumed = train_tiny(base, data, tmp_path / "resumed", max_steps=4, save_every=2, qlora=True, resume=True)
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_adapter_of_a_layer_peft_saves_whole_is_written(setup):
    """PEFT also saves the base weight of an adapted lm_head; the completeness check counts only
    the adapter's own tensors, so it does not mistake the extra one for a problem."""
    from safetensors.torch import load_file

    base, data, root = setup
    out = train_tiny(base, data, root / "head", max_steps=2, target_modules=["q_proj", "lm_head"])
    saved = load_file(out / "adapter_model.safetensors")
    assert sum(".lora_" in key for key in saved) == 2 * (2 + 1)  # q_proj in both blocks, and lm_head


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

    base = nf4_base(tmp_path / "base")
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


def test_engines_the_trainer_cannot_serve_are_refused_by_name(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from adapters.config import TrainConfig
    from adapters.lora import QLoRAUnavailable, check_engine

    def state(engine, fsdp_version=2, processes=2):
        return SimpleNamespace(distributed_type=engine, fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version),
                               num_processes=processes)

    def config(**options):
        return TrainConfig(data="d.jsonl", output=str(tmp_path / "out"), **options)

    for engine in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        check_engine(state(engine), config(qlora=True, save_every=5))
    check_engine(state(DistributedType.FSDP), config(save_every=5, resume=True))
    check_engine(state(DistributedType.DEEPSPEED), config())
    for engine in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(QLoRAUnavailable, match=f"does not run under {engine.value}; use one GPU or DDP"):
            check_engine(state(engine), config(qlora=True))
    with pytest.raises(ValueError, match="FSDP version 1 would write an empty adapter; set fsdp_version: 2"):
        check_engine(state(DistributedType.FSDP, fsdp_version=1), config())
    for options in (dict(save_every=5), dict(resume=True)):
        with pytest.raises(ValueError, match="--save-every and --resume do not run under DeepSpeed"):
            check_engine(state(DistributedType.DEEPSPEED), config(**options))
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_engine(state(DistributedType.MULTI_CPU), config())
    with pytest.raises(ValueError, match="started 2 processes, but accelerate runs each one alone"):
        check_engine(state(DistributedType.NO, processes=1), config())


def test_an_adapter_file_missing_trained_tensors_is_an_error(setup, captured, monkeypatch):
    """PEFT picks the adapter's tensors out of a state dict by module names; where an engine renames
    the modules (FSDP1 did), it picks none, and the trainer must refuse to publish the empty file."""
    from adapters.lora import save_weights

    base, data, root = setup
    old = train_tiny(base, data, root / "persona")
    old_bytes = (old / "adapter_model.safetensors").read_bytes()
    model = captured["model"]
    renamed = {key.replace(".layers.", ".layers._fsdp_wrapped_module."): value
               for key, value in model.state_dict().items()}
    save_weights(model, root / "whole", model.state_dict())  # sanity: the real names pass
    with pytest.raises(RuntimeError, match=r"holds 0 of the \d+ trained tensors"):
        save_weights(model, root / "renamed", renamed)
    import adapters.lora

    real = adapters.lora.save_weights
    monkeypatch.setattr(adapters.lora, "save_weights",
                        lambda peft_model, folder, state=None: real(peft_model, folder, renamed))
    with pytest.raises(RuntimeError, match="no adapter was written"):
        train_tiny(base, data, root / "persona")
    assert (old / "adapter_model.safetensors").read_bytes() == old_bytes


def test_train_cli_end_to_end(setup):
    base, data, root = setup
    command = [sys.executable, "-m", "adapters.train", "--data", str(data), "--out", str(root / "cli"), "--model", base,
               "--max-steps", "2", "--rank", "4", "--max-length", "32", "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"adapter written: {root / 'cli'}\n"  # the result alone: libraries' logs go to stderr
    assert (root / "cli" / "adapter_metadata.json").is_file()
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


ENGINES = {
    # name: (shipped config, environment), all on two CPU processes over gloo
    "ddp": ("multi_gpu.yaml", {"ACCELERATE_USE_CPU": "1"}),
    "fsdp2": ("fsdp.yaml", {"ACCELERATE_USE_CPU": "1"}),
    "zero3": ("deepspeed_zero3.yaml", {"DS_ACCELERATOR": "cpu"}),
}
SHIM = str(ROOT / "tests/engines_on_cpu.py")
ENGINE_NAMES = {"ddp": "DDP x2", "fsdp2": "FSDP2 x2", "zero3": "DeepSpeed ZeRO-3 x2"}
ENGINE_OPTIONS = dict(rank=4, alpha=8.0, dropout=0.0, learning_rate=3e-2, batch_size=2, max_length=64,
                      eval_fraction=0.2, seed=0, precision="fp32")


def launch(engine: str, base: str, data: Path, out: Path, extra_env: dict | None = None, as_shipped: bool = False,
           **options):
    """`accelerate launch` of the trainer with a shipped config on two CPU processes, in fp32
    unless `as_shipped` keeps the config's own mixed precision (bf16)."""
    config, env = ENGINES[engine]
    precision = [] if as_shipped else ["--mixed_precision", "no"]
    plain = engine == "ddp" and not extra_env  # DDP runs on CPUs as shipped; the others need the shim
    program = ["-m", "adapters.train"] if plain else [SHIM]
    flags = [("--no-" if value is False else "--") + key.replace("_", "-") + ("" if isinstance(value, bool) else f"={value}")
             for key, value in {**ENGINE_OPTIONS, **options}.items()]

    def command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "adapters/accelerate" / config),
            "--num_processes", "2", *precision, "--main_process_port", str(port), *program,
            "--data", str(data), "--out", str(out), "--model", base, "--no-progress", *flags]

    environment = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    return run_on_free_port(command, cwd=ROOT, timeout=300, env={**environment, **env, **(extra_env or {})})


@pytest.fixture
def varied(setup):
    """16 training and 4 eval rows of different lengths: every step takes whole micro-batches."""
    base, _, root = setup
    rows = [{"input": f"question {i}", "output": "zebra quokka " * (1 + i % 5)} for i in range(20)]
    return base, write_rows(root.parent / "varied.jsonl", rows), root


@pytest.mark.parametrize("engine", ENGINES)
def test_accelerate_launch_equals_one_process_with_gradient_accumulation(varied, engine):
    """The shipped configs, run on CPU processes (tests/engines_on_cpu.py lifts accelerate's GPU
    checks for FSDP and DeepSpeed): two processes of batch 2 accumulating 2 micro-batches take the
    same steps as one process accumulating 4, so the adapters are equal. Under DDP the launched run
    also takes the chunked loss (which sits outside DDP's forward) and compiled blocks, against the
    reference's own loss and eager blocks."""
    from safetensors.torch import load_file

    from adapters.metadata import AdapterMetadata

    base, data, root = varied
    chunked = {"chunked_loss": True, "compile": True} if engine == "ddp" else {}  # sharded engines refuse them
    done = launch(engine, base, data, root / engine, max_steps=3, grad_accum=2, **chunked)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("adapter written") == 1  # the main process reports, the other one does not
    if engine != "ddp":  # plain DDP runs adapters.train itself, without the shim that reports
        assert LEFT_UP not in done.stderr  # each process shut its group down (else, now and then, SIGABRT)

    own_loss = {"chunked_loss": False}  # the reference takes the model's own loss, as the sharded engines do
    reference = train_tiny(base, data, root / "accumulated", max_steps=3, grad_accum=4, **own_loss, **ENGINE_OPTIONS)
    fewer = train_tiny(base, data, root / "fewer", max_steps=3, grad_accum=2, **own_loss, **ENGINE_OPTIONS)
    launched, expected, other = (load_file(folder / "adapter_model.safetensors") for folder in (root / engine, reference, fewer))
    assert any(not torch.equal(other[key], expected[key]) for key in expected)  # sanity: the batch size matters
    assert launched.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(launched[key], expected[key], rtol=0, atol=1e-5)
    meta, expected_meta = AdapterMetadata.read(root / engine), AdapterMetadata.read(reference)
    assert meta.engine == ENGINE_NAMES[engine] and expected_meta.engine == "one process"  # the engine really ran
    assert (meta.speedups, expected_meta.speedups) == (["chunked loss", "compiled blocks"] if chunked else [], [])
    assert (meta.steps, meta.examples, meta.eval_examples) == (3, 16, 4)
    assert meta.base_fingerprint == expected_meta.base_fingerprint
    assert meta.eval_loss == pytest.approx(expected_meta.eval_loss, abs=1e-5)
    assert meta.final_loss == pytest.approx(expected_meta.final_loss, abs=1e-5)


@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_sharded_engines_train_in_their_shipped_bf16(varied, engine):
    """The FSDP2 and ZeRO-3 configs as shipped compute in bf16: the run keeps fp32 adapter weights,
    lands near the fp32 run's losses, and the registry serves the adapter on the fp32 base."""
    from safetensors.torch import load_file

    from adapters.host import AdapterHost
    from adapters.metadata import AdapterMetadata

    base, data, root = varied
    done = launch(engine, base, data, root / engine, as_shipped=True, max_steps=3, grad_accum=2, precision="bf16")
    assert done.returncode == 0, done.stderr[-3000:]
    weights = load_file(root / engine / "adapter_model.safetensors")
    assert {value.dtype for value in weights.values()} == {torch.float32}
    assert all(value.abs().sum() > 0 for key, value in weights.items() if "lora_B" in key)
    meta = AdapterMetadata.read(root / engine)
    reference = AdapterMetadata.read(train_tiny(base, data, root / "fp32", max_steps=3, grad_accum=4, **ENGINE_OPTIONS))
    assert meta.engine == ENGINE_NAMES[engine] and meta.config["precision"] == "bf16"
    assert meta.final_loss == pytest.approx(reference.final_loss, abs=0.05)  # at most 0.018 apart measured
    assert meta.eval_loss == pytest.approx(reference.eval_loss, abs=0.05)
    dense = load_tiny(base)
    name = AdapterHost(dense, threading.Lock()).attach_path(root / engine)  # vetted: base fingerprint, shapes
    assert not torch.allclose(logits(dense.model, PROBE), logits(dense.model, PROBE, adapter=name), atol=1e-3)


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_accelerate_launch_resumes_an_interrupted_run(varied, engine):
    """Interrupted after step 3 with a checkpoint at step 2, then resumed: the adapter equals an
    uninterrupted one-process run's. Under FSDP each process holds a shard of the adapter and of
    the optimizer state, so the checkpoint must gather them and the resume must shard them again."""
    from safetensors.torch import load_file

    base, data, root = varied
    out = root / engine
    stopped = launch(engine, base, data, out, extra_env={"STOP_AFTER_STEP": "3"}, max_steps=4, grad_accum=2,
                     save_every=2)
    assert stopped.returncode != 0 and "interrupted: no adapter written" in stopped.stderr, stopped.stderr[-3000:]
    assert not out.exists() and [p.name for p in (root / f".{engine}.run").glob("step-*")] == ["step-000002"]
    resumed = launch(engine, base, data, out, max_steps=4, grad_accum=2, save_every=2, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    log = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]
    reference = train_tiny(base, data, root / "straight", max_steps=4, grad_accum=4, **ENGINE_OPTIONS)
    got, expected = load_file(out / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)


def test_qlora_under_ddp_equals_one_process_with_gradient_accumulation(tmp_path, monkeypatch):
    """QLoRA on two DDP processes (bitsandbytes' CPU kernels, the CUDA check lifted): each process
    places its own 4-bit base, and the adapter equals one process's with twice the accumulation."""
    from safetensors.torch import load_file

    import adapters.lora
    from adapters.metadata import AdapterMetadata

    base = nf4_base(tmp_path / "base")
    data = write_rows(tmp_path / "varied.jsonl",
                      [{"input": f"question {i}", "output": "zebra quokka " * (1 + i % 5)} for i in range(20)])
    # Both runs take the model's own loss. The 4-bit layers round coarsely: in one process the chunked
    # loss's first gradients differ from the own loss's by up to 6e-5 (of 0.14), so a gradient near zero
    # may take either sign, and AdamW's first steps move each weight by about the learning rate in its
    # gradient's sign. Two runs that differ in the loss thus differ by up to 4e-2 in single weights.
    done = launch("ddp", base, data, tmp_path / "ddp", extra_env={"QLORA_ON_CPU": "1"}, max_steps=2, grad_accum=2,
                  qlora=True, chunked_loss=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert AdapterMetadata.read(tmp_path / "ddp").engine == "DDP x2"

    monkeypatch.setattr(adapters.lora, "check_qlora", lambda: None)
    own_loss = {"qlora": True, "chunked_loss": False}
    reference = train_tiny(base, data, tmp_path / "one", max_steps=2, grad_accum=4, **own_loss, **ENGINE_OPTIONS)
    fewer = train_tiny(base, data, tmp_path / "fewer", max_steps=2, grad_accum=2, **own_loss, **ENGINE_OPTIONS)
    got, expected, other = (load_file(folder / "adapter_model.safetensors") for folder in (tmp_path / "ddp", reference, fewer))
    assert got.keys() == expected.keys()
    # The 4-bit kernels round differently when DDP sums the gradients: 2.9e-5 at most measured,
    # against a change of more than 1e-3 when the batch is halved.
    assert max((other[key] - expected[key]).abs().max() for key in expected) > 1e-3
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4)


def test_a_gpu_config_launched_without_gpus_is_refused_before_training(varied):
    """Without a GPU (and without the test shim) accelerate runs each launched process alone, and
    every one of them would train and publish the same adapter: refused, naming the way out."""
    base, data, root = varied
    config, _ = ENGINES["fsdp2"]
    def command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "adapters/accelerate" / config),
            "--num_processes", "2", "--main_process_port", str(port), "-m", "adapters.train",
            "--data", str(data), "--out", str(root / "alone"), "--model", base, "--no-progress", "--max-steps", "1"]

    environment = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    done = run_on_free_port(command, cwd=ROOT, timeout=300, env=environment)
    assert done.returncode != 0 and "adapter written" not in done.stdout
    assert "error: accelerate launch started 2 processes, but accelerate runs each one alone" in done.stderr
    assert not (root / "alone").exists()


def test_fsdp1_is_refused_before_training(varied):
    """FSDP1 renames the layers it wraps, so PEFT would save no LoRA weights: refused up front."""
    base, data, root = varied
    done = launch("fsdp2", base, data, root / "fsdp1", max_steps=1)  # the shipped config, with the version overridden
    assert done.returncode == 0, done.stderr[-3000:]  # sanity: the same launch with FSDP2 trains
    config, env = ENGINES["fsdp2"]
    def command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "adapters/accelerate" / config),
            "--fsdp_version", "1", "--fsdp_sync_module_states", "false", "--fsdp_cpu_ram_efficient_loading", "false",
            "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port), SHIM,
            "--data", str(data), "--out", str(root / "fsdp1-refused"), "--model", base, "--no-progress"]

    refused = run_on_free_port(command, cwd=ROOT, timeout=300, env={**os.environ, **env})
    assert refused.returncode != 0
    assert "error: FSDP version 1 would write an empty adapter; set fsdp_version: 2" in refused.stderr
    assert not (root / "fsdp1-refused").exists()


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
    # A shell's background job inherits SIGINT ignored, and Python then keeps ignoring it: restore it.
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        log = root / ".kept.run" / "train_log.jsonl"
        deadline = time.monotonic() + 120
        while not (log.is_file() and log.read_text()) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.2)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()  # a no-op once it has exited; never leave a 100000-step run behind
    assert child.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted: no adapter written" in stderr
    assert "--resume" not in stderr  # no --save-every, so no checkpoint to resume from
    assert file_sha256(old / "adapter_model.safetensors") == before


def test_saving_an_adapter_asks_the_hub_nothing(tmp_path, monkeypatch):
    """PEFT's default checked the hub for the base's config on every save (is the vocabulary resized?),
    and warned twice offline; this trainer never resizes it, and saves embeddings only if it trains them."""
    import warnings

    from peft import LoraConfig, get_peft_model

    from adapters.lora import save_weights
    from tiny import tiny_loaded

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = get_peft_model(tiny_loaded().model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.peft_config["default"].base_model_name_or_path = hub_id
    asked = []
    monkeypatch.setattr("peft.utils.save_and_load.check_file_exists_on_hf_hub", lambda *args, **kw: asked.append(args))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_weights(model, tmp_path / "adapter")
    assert asked == [] and not [w for w in caught if hub_id in str(w.message)]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
