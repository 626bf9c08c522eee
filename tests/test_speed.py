"""The trainer's speed-ups (`adapters/speed.py`) change how fast it trains, never what it trains.

The chunked loss is checked against the model's own loss and gradients, and against cross-entropy
over full logits computed by hand; the trainer with each speed-up against the trainer without it.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from test_adapters_support import PERSONA_ROWS, train_tiny, write_rows


def tiny_lora(layers: int = 2):
    from peft import LoraConfig, get_peft_model

    from tiny import tiny_model, tiny_tokenizer

    model = tiny_model(tiny_tokenizer(), layers=layers)
    model.config.use_cache = False
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    return peft_model.train()


def labelled_batch(vocab: int):
    """Three rows of 20 tokens: the first all prompt (-100), the others labelled from position 8,
    the last padded after 15 tokens."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 20), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0
    labels = ids.clone()
    labels[0] = -100
    labels[:, :8] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lora_grads(model) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def test_chunked_loss_equals_the_models_own_loss_and_gradients():
    from adapters.speed import chunked_loss, head_off

    model = tiny_lora()
    batch = labelled_batch(model.config.vocab_size)
    own = model(**batch).loss
    own.backward()
    expected = lora_grads(model)

    # chunks of 7 over 3 x 19 predictions: the first chunks see only the all-prompt row
    with head_off(model.get_base_model()) as head:
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert hidden.shape[-1] == model.config.hidden_size  # the head is off: hidden states come out
    loss = chunked_loss(hidden, head.weight, batch["labels"], head.bias, chunk=7)
    loss.backward()
    got = lora_grads(model)

    torch.testing.assert_close(loss, own, rtol=0, atol=1e-6)
    assert expected.keys() == got.keys() and len(got) == 2 * 7 * 2
    # The chunked loss sums before it scales, so its rounding differs from the model's own: both are
    # held to the same model in float64, and the chunked one may err at most as much again.
    model.double()
    model(**batch).loss.backward()
    exact = lora_grads(model)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
        own_error = (expected[name].double() - exact[name]).abs().max()
        assert (got[name].double() - exact[name]).abs().max() <= 2 * own_error + 1e-8, name
    assert model.get_base_model().get_output_embeddings() is head  # put back


def test_chunked_loss_with_a_biased_head_equals_cross_entropy_over_full_logits():
    """Also for a head that trains (a tied embedding the adapter updates): its weight and bias get
    their gradients too; with the head frozen, the hidden states' gradient is the same."""
    from adapters.speed import chunked_loss

    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 9, 16, generator=generator, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, requires_grad=True)
    bias = torch.randn(50, generator=generator, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9), generator=generator)
    labels[0, :4] = -100
    logits = hidden[:, :-1] @ weight.T + bias
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=-100)
    expected_grads = torch.autograd.grad(expected, (hidden, weight, bias))
    got = chunked_loss(hidden, weight, labels, bias, chunk=5)
    got_grads = torch.autograd.grad(got, (hidden, weight, bias))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-6)

    frozen = chunked_loss(hidden, weight.detach(), labels, bias.detach(), chunk=5)
    (frozen_grad,) = torch.autograd.grad(frozen, hidden)
    torch.testing.assert_close(frozen_grad, expected_grads[0], rtol=1e-5, atol=1e-6)


def test_chunked_loss_under_bf16_autocast_errs_no_more_than_the_models_own():
    """Under autocast the head's products run in bf16 for both losses; measured against the same
    model in float64, the chunked loss's gradients are as near as the model's own loss's."""
    from adapters.speed import chunked_loss, head_off

    model = tiny_lora()
    batch = labelled_batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        own = model(**batch).loss
    own.backward()
    expected = lora_grads(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with head_off(model.get_base_model()) as head:
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = chunked_loss(hidden, head.weight, batch["labels"], head.bias, chunk=7)
    loss.backward()
    got = lora_grads(model)
    model.double()
    exact_loss = model(**batch).loss
    exact_loss.backward()
    exact = lora_grads(model)

    assert abs(loss.item() - exact_loss.item()) <= 2 * abs(own.item() - exact_loss.item()) + 1e-3
    own_error = max((expected[name].double() - exact[name]).abs().max() for name in exact)
    got_error = max((got[name].double() - exact[name]).abs().max() for name in exact)
    assert own_error > 1e-4  # sanity: bf16 rounding shows at this size
    assert got_error <= 1.5 * own_error


def test_chunked_loss_without_gradients_computes_the_same_loss(monkeypatch):
    """Evaluation runs under no_grad: the same loss, and no gradient work (no gradient buffer is
    allocated, nothing to backward)."""
    from adapters.speed import chunked_loss

    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 11, 16, generator=generator, requires_grad=True)
    weight = torch.randn(40, 16, generator=generator)
    labels = torch.randint(0, 40, (3, 11), generator=generator)
    buffers = []
    real_zeros_like = torch.zeros_like
    monkeypatch.setattr(torch, "zeros_like", lambda *a, **k: buffers.append(a[0].shape) or real_zeros_like(*a, **k))
    trained = chunked_loss(hidden, weight, labels, chunk=4)
    assert buffers == [(3 * 10, 16)]  # sanity: with gradients, one buffer for the hidden states' gradient
    buffers.clear()
    with torch.no_grad():
        evaluated = chunked_loss(hidden, weight, labels, chunk=4)
    assert evaluated.grad_fn is None and buffers == []
    assert evaluated.item() == pytest.approx(trained.item(), rel=1e-6)


def test_a_batch_with_nothing_labelled_has_zero_loss_and_zero_gradient():
    from adapters.speed import chunked_loss

    hidden = torch.randn(2, 5, 8, requires_grad=True)
    loss = chunked_loss(hidden, torch.randn(30, 8), torch.full((2, 5), -100))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(hidden.grad) == 0


def test_head_off_puts_the_head_back_when_the_block_fails():
    from adapters.speed import head_off

    model = tiny_lora().get_base_model()
    head = model.get_output_embeddings()
    with pytest.raises(RuntimeError, match="boom"):
        with head_off(model):
            assert isinstance(model.get_output_embeddings(), torch.nn.Identity)
            raise RuntimeError("boom")
    assert model.get_output_embeddings() is head


def tiny_capped(tokenizer, cap: float = 1.0):
    """A tiny Gemma 2, which soft-caps its logits after the head (cap * tanh(logits / cap))."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=cap,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    return Gemma2ForCausalLM(config)


def test_check_head_finds_logits_transformed_after_the_head_and_heads_it_cannot_chunk():
    from peft import LoraConfig, get_peft_model

    from adapters.speed import check_head
    from tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer).train()
    assert check_head(model) is None
    assert model.training  # the probe put the mode back
    capped = tiny_capped(tokenizer)
    assert "transforms them after the head" in check_head(capped)
    capped.config.final_logit_softcapping = None  # the same model without its cap can be chunked
    assert check_head(capped) is None
    adapted = get_peft_model(tiny_model(tokenizer), LoraConfig(r=2, target_modules=["lm_head"]))
    assert "not a linear layer" in check_head(adapted.get_base_model())
    # the probe runs in training mode, as training will: dropout draws the same masks in both of its runs
    dropped = get_peft_model(tiny_model(tokenizer), LoraConfig(r=2, lora_dropout=0.5, target_modules="all-linear",
                                                               init_lora_weights=False)).train()
    ids = torch.arange(1, 9)[None]
    with torch.no_grad():
        assert not torch.equal(dropped(input_ids=ids).logits, dropped(input_ids=ids).logits)  # sanity: dropout acts
    modes = []
    dropped.get_base_model().model.layers[0].register_forward_pre_hook(lambda module, _: modes.append(module.training))
    dropped.eval()
    state = torch.random.get_rng_state()
    assert check_head(dropped.get_base_model()) is None
    assert torch.equal(torch.random.get_rng_state(), state)  # and training's random stream is left as it was
    assert modes == [True, True] and not dropped.training  # both runs in training mode; the mode put back


def test_choose_turns_each_speedup_on_where_it_pays():
    from adapters.speed import COMPILE_MIN_WORK, Speedups, choose

    def config(chunked_loss=None, compile=None):
        return SimpleNamespace(chunked_loss=chunked_loss, compile=compile)

    big, small = COMPILE_MIN_WORK, COMPILE_MIN_WORK / 2
    assert choose(config(), False, "cuda", big) == Speedups(chunked_loss=True, compile=True)
    assert choose(config(), False, "cuda", small) == Speedups(chunked_loss=True, compile=False)
    assert choose(config(), False, "cpu", big) == Speedups(chunked_loss=True, compile=False)
    assert choose(config(), False, "mps", big) == Speedups(chunked_loss=True, compile=False)
    assert choose(config(True, True), False, "cpu", 0) == Speedups(chunked_loss=True, compile=True)
    assert choose(config(False, False), False, "cuda", big) == Speedups(chunked_loss=False, compile=False)
    assert choose(config(), True, "cuda", big) == Speedups(chunked_loss=False, compile=False)


def test_speedups_asked_for_under_a_sharded_engine_are_refused_before_training(tmp_path):
    from accelerate.utils import DistributedType

    from adapters.config import TrainConfig
    from adapters.lora import check_engine

    state = SimpleNamespace(distributed_type=DistributedType.FSDP, fsdp_plugin=SimpleNamespace(fsdp_version=2),
                            num_processes=2)
    check_engine(state, TrainConfig(data="d.jsonl", output=str(tmp_path / "out")))  # automatic: simply off
    for flag, option in (("chunked-loss", "chunked_loss"), ("compile", "compile")):
        with pytest.raises(ValueError, match=f"--{flag} does not run under FSDP, which shards the model"):
            check_engine(state, TrainConfig(data="d.jsonl", output=str(tmp_path / "out"), **{option: True}))


def test_the_command_line_leaves_both_automatic_unless_told():
    from adapters.train import build_parser, config_from_args

    def parsed(*flags):
        config = config_from_args(build_parser().parse_args(["--data", "d.jsonl", "--out", "/tmp/x", *flags]))
        return config.chunked_loss, config.compile

    assert parsed() == (None, None)
    assert parsed("--chunked-loss", "--no-compile") == (True, False)
    assert parsed("--no-chunked-loss", "--compile") == (False, True)


def adapter_of(folder):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def losses_of(folder) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_training_with_the_chunked_loss_equals_training_with_the_models_own(tmp_path):
    from adapters.metadata import AdapterMetadata
    from test_adapters_support import tiny_base

    base, data = tiny_base(tmp_path / "base"), write_rows(tmp_path / "data.jsonl", PERSONA_ROWS)
    own = train_tiny(base, data, tmp_path / "own", chunked_loss=False, eval_fraction=0.25)
    chunked = train_tiny(base, data, tmp_path / "chunked", chunked_loss=True, eval_fraction=0.25)
    a, b = adapter_of(own), adapter_of(chunked)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)
    assert losses_of(chunked) == pytest.approx(losses_of(own), abs=2e-5)  # the log keeps 5 decimals
    meta_own, meta_chunked = AdapterMetadata.read(own), AdapterMetadata.read(chunked)
    assert meta_chunked.eval_loss == pytest.approx(meta_own.eval_loss, abs=1e-5)
    assert (meta_own.speedups, meta_chunked.speedups) == ([], ["chunked loss"])
    default = train_tiny(base, data, tmp_path / "default", eval_fraction=0.25)  # on this CPU: chunked, not compiled
    assert AdapterMetadata.read(default).speedups == ["chunked loss"]
    assert all(torch.equal(adapter_of(default)[key], b[key]) for key in b)
    # sanity: the check can fail; a run with another seed trains another adapter
    other = adapter_of(train_tiny(base, data, tmp_path / "other", chunked_loss=True, seed=1))
    assert any(not torch.allclose(other[key], a[key], atol=1e-3) for key in a)


def test_chunked_loss_on_a_model_that_caps_its_logits_is_refused(tmp_path):
    from tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_capped(tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    data = write_rows(tmp_path / "data.jsonl", PERSONA_ROWS)
    with pytest.raises(ValueError, match="--chunked-loss cannot train this model: its logits are not its output head"):
        train_tiny(str(tmp_path / "base"), data, tmp_path / "out", chunked_loss=True)
    assert not (tmp_path / "out").exists()


def test_training_with_compiled_blocks_matches_eager_and_compiles_each_block_once(tmp_path):
    """Regional compilation: four blocks share one compiled graph (two: the first block's input
    does not require grad, the others' does), and the adapter is eager's up to float rounding."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from adapters.metadata import AdapterMetadata
    from tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer, layers=4).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base, data = str(tmp_path / "base"), write_rows(tmp_path / "data.jsonl", PERSONA_ROWS)
    eager = train_tiny(base, data, tmp_path / "eager", max_steps=3, compile=False)
    torch._dynamo.reset()
    counters.clear()
    compiled = train_tiny(base, data, tmp_path / "compiled", max_steps=3, compile=True)
    assert 1 <= counters["stats"]["unique_graphs"] <= 2
    assert AdapterMetadata.read(compiled).speedups == ["chunked loss", "compiled blocks"]  # chunked: the default
    a, b = adapter_of(eager), adapter_of(compiled)
    assert a.keys() == b.keys()  # Module.compile keeps the parameter names PEFT saves by
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    # with activation checkpointing too (how a large base fits one GPU): each compiled block is
    # checkpointed and runs again in the backward pass
    checkpointed = train_tiny(base, data, tmp_path / "checkpointed", max_steps=3, compile=True,
                              gradient_checkpointing=True)
    c = adapter_of(checkpointed)
    for key in a:
        torch.testing.assert_close(c[key], a[key], rtol=1e-4, atol=1e-5)
