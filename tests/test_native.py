"""The native decoder against references: greedy `model.generate` and the model's own logits."""

import os
import shutil

import pytest
import torch

import bot.native as native
from bot.native import KIND_BF16, KIND_F32, KIND_Q4, KIND_Q8, NativeDecoder, NativeUnavailable
from test_fastdecode import PROMPTS, fresh_tiny, make_q4_1, plain, prompt_ids

pytestmark = pytest.mark.skipif(not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")),
                                reason="no C compiler: the native decoder cannot be built here")


def make_q8_0_embedding(model) -> None:
    """Give the (tied) embedding Q8_0-shaped rows: per 32 inputs, an fp16 d times q in -127..127."""
    generator = torch.Generator().manual_seed(1)
    weight = model.get_input_embeddings().weight
    rows, cols = weight.shape
    q = torch.randint(-127, 128, (rows, cols // 32, 32), generator=generator).float()
    q[..., 0] = 127  # Q8_0 scales each block so that its largest magnitude is 127
    d = (torch.rand(rows, cols // 32, 1, generator=generator) * 0.02 + 0.001).half().float()
    with torch.no_grad():
        weight.copy_((d * q).reshape(rows, cols))


def quantized_tiny():
    tiny = fresh_tiny()
    make_q4_1(tiny.model)
    make_q8_0_embedding(tiny.model)
    return tiny


def step_logits(model, ids, tokens: int) -> list[torch.Tensor]:
    """The model's own last-position logits after the prompt and after each greedy token."""
    out = []
    with torch.inference_mode():
        for _ in range(tokens):
            logits = model(input_ids=ids).logits[0, -1]
            out.append(logits)
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return out


@pytest.mark.parametrize("text", PROMPTS)
def test_dense_weights_give_generate_tokens(text):
    tiny = fresh_tiny()
    decoder = NativeDecoder(tiny.model, max_len=128)
    assert {p.kind for p in decoder.packed} == {KIND_F32} and decoder.head.kind == KIND_F32
    ids = prompt_ids(tiny.tokenizer, text)
    assert torch.equal(decoder.generate(ids, 24, set()), plain(tiny.model, ids, 24))


def assert_decodes_like_the_model(decoder, model, seed: int, tokens: int = 20) -> None:
    """Greedy tokens equal `generate`'s after a random 20-token prompt, and the last step's logits
    equal the model's own on the whole sequence."""
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(seed))
    expected = plain(model, ids, tokens)
    assert torch.equal(decoder.generate(ids, tokens, set()), expected)
    with torch.inference_mode():
        last = model(input_ids=expected[:, :-1]).logits[0, -1]
    torch.testing.assert_close(decoder.logits, last, rtol=1e-4, atol=1e-4)


def test_bf16_valued_weights_are_packed_as_bf16_and_give_generate_tokens():
    """A bf16 checkpoint loaded in fp32 (the hub's default model): 16 bits per weight, same values."""
    for model in (fresh_tiny().model, odd_llama()):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(parameter.bfloat16().float())
        decoder = NativeDecoder(model, max_len=128)
        assert {p.kind for p in decoder.packed} == {KIND_BF16} and decoder.head.kind == KIND_BF16
        assert_decodes_like_the_model(decoder, model, seed=5)


def test_q4_1_and_q8_0_weights_are_packed_without_loss():
    tiny = quantized_tiny()
    decoder = NativeDecoder(tiny.model, max_len=128)
    assert {p.kind for p in decoder.packed} == {KIND_Q4} and decoder.head.kind == KIND_Q8
    dense = sum(p.rows * p.cols * 4 for p in decoder.packed)
    assert sum(p.nbytes for p in decoder.packed) < dense / 4, "4 bits plus two scales per 32 weights"

    ids = prompt_ids(tiny.tokenizer, PROMPTS[1])
    assert torch.equal(decoder.generate(ids, 24, set()), plain(tiny.model, ids, 24))
    expected = step_logits(tiny.model, ids, 6)
    token = decoder.start(ids, max_new_tokens=8)
    for produced, logits in enumerate(expected[1:], start=1):
        assert token == int(expected[produced - 1].argmax())
        token = decoder.step(token, ids.shape[1] + produced - 1)
        torch.testing.assert_close(decoder.logits, logits, rtol=1e-4, atol=1e-4)


def odd_llama(**changes):
    """A Llama whose shapes leave partial row blocks, an untied head, head_dim != hidden / heads and a
    down projection too narrow for groups of 32 (so it stays dense), with Q4_1 / Q8_0 weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = dict(vocab_size=403, hidden_size=64, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=12, tie_word_embeddings=False, max_position_embeddings=512)
    model = LlamaForCausalLM(LlamaConfig(**(config | changes))).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in [*model.model.layers.modules(), model.lm_head]:
            if not isinstance(module, torch.nn.Linear) or module.weight.shape[1] % 32:
                continue
            out, inp = module.weight.shape
            if module is model.lm_head:
                q = torch.randint(-127, 128, (out, inp // 32, 32), generator=generator).float()
                q[..., 0] = 127
                d = (torch.rand(out, inp // 32, 1, generator=generator) * 0.02 + 0.001).half().float()
                module.weight.copy_((d * q).reshape(out, inp))
            else:
                q = torch.randint(0, 16, (out, inp // 32, 32), generator=generator).float()
                q[..., 0], q[..., 1] = 0, 15
                d = (torch.rand(out, inp // 32, 1, generator=generator) * 0.04 + 0.01).half().float()
                module.weight.copy_((d * q + (-7.5 * d).half().float()).reshape(out, inp))
    return model


@pytest.mark.parametrize("changes", [{}, {"head_dim": 32}, {"num_key_value_heads": 4, "head_dim": 16}])
def test_odd_shapes_give_generate_tokens_and_logits(changes):
    model = odd_llama(**changes)
    decoder = NativeDecoder(model, max_len=128)
    kinds = {(p.rows, p.kind) for p in decoder.packed}
    assert decoder.head.kind == KIND_Q8 and (40, KIND_F32) not in kinds and any(k == KIND_F32 for _, k in kinds)
    assert any(rows % 16 for rows, kind in kinds if kind == KIND_Q4) or changes, "a partial block of Q4 rows"
    assert_decodes_like_the_model(decoder, model, seed=3)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX"),
                    reason="both builds would be the portable one")
def test_portable_build_equals_the_vector_build(monkeypatch, tmp_path):
    tiny = quantized_tiny()
    ids = prompt_ids(tiny.tokenizer, PROMPTS[0])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_library", None)
    vector = NativeDecoder(tiny.model, max_len=64).generate(ids, 16, set())
    built = list(tmp_path.glob("icl-bot/native/decode-*.so"))
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "compile_flags", lambda: ["-O2", "-fPIC", "-shared", "-fopenmp"])
    portable = NativeDecoder(tiny.model, max_len=64)
    rebuilt = list(tmp_path.glob("icl-bot/native/decode-*.so"))
    assert len(built) == len(rebuilt) == 1 and built != rebuilt, "a new library replaced the other flags' one"
    assert torch.equal(portable.generate(ids, 16, set()), vector)


def test_one_thread_equals_two():
    tiny = quantized_tiny()
    ids = prompt_ids(tiny.tokenizer, PROMPTS[2])
    assert torch.equal(NativeDecoder(tiny.model, max_len=64, threads=1).generate(ids, 16, set()),
                       NativeDecoder(tiny.model, max_len=64, threads=2).generate(ids, 16, set()))


def test_stops_after_the_end_of_turn_token_and_frees_its_buffers():
    tiny = fresh_tiny()
    decoder = NativeDecoder(tiny.model, max_len=1024)
    ids = prompt_ids(tiny.tokenizer, PROMPTS[0])
    first, second = list(decoder.tokens(ids, 2, set()))
    assert list(decoder.tokens(ids, 10, {second})) == [first, second]
    long = torch.cat([ids] * 20, dim=1)  # past one buffer step: a larger buffer is made
    assert long.shape[1] > native.CACHE_STEP
    assert torch.equal(decoder.generate(long, 8, set()), plain(tiny.model, long, 8))
    assert decoder.k_cache is None and decoder.cache_len == 0, "the KV buffers went with the request"
    with pytest.raises(ValueError, match="outside the KV buffer"):
        decoder.step(first, 0)


def test_refuses_requests_and_models_it_cannot_decode(monkeypatch, tmp_path):
    tiny = fresh_tiny()
    ids = prompt_ids(tiny.tokenizer, PROMPTS[0])
    with pytest.raises(ValueError, match="exceeds max_len 16"):
        list(NativeDecoder(tiny.model, max_len=16).tokens(ids, 32, set()))
    with pytest.raises(ValueError, match="one sequence at a time"):
        list(NativeDecoder(tiny.model, max_len=64).tokens(ids.repeat(2, 1), 4, set()))
    with pytest.raises(NativeUnavailable, match="fp32 model on the CPU, not torch.bfloat16"):
        NativeDecoder(fresh_tiny().model.to(torch.bfloat16))
    with pytest.raises(NativeUnavailable, match="training mode"):
        NativeDecoder(fresh_tiny().model.train())

    from transformers import Qwen2Config, Qwen2ForCausalLM

    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(NativeUnavailable, match="not 'qwen2'"):
        NativeDecoder(qwen.eval())

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.raises(NativeUnavailable, match="cannot run the C compiler"):
        NativeDecoder(tiny.model)


@pytest.mark.integration
def test_default_model_gives_generate_tokens(default_model):
    decoder = NativeDecoder(default_model.model, max_len=256)
    assert {p.kind for p in decoder.packed} == {KIND_Q4} and decoder.head.kind == KIND_Q8, "a Q4_1 GGUF"
    ids = prompt_ids(default_model.tokenizer, "Explain in-context learning in two sentences.")
    assert torch.equal(decoder.generate(ids, 48, set()), plain(default_model.model, ids, 48))


def adapter_generate(model, ids, tokens: int, adapter: str):
    with torch.inference_mode():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
                              pad_token_id=0, eos_token_id=None, adapter_names=[adapter])


def test_lora_adapters_give_peft_generate_tokens_and_never_cross():
    from tiny import with_lora_adapters

    tiny = quantized_tiny()
    decoder = NativeDecoder(tiny.model, max_len=128)  # built on the plain model, adapters come later
    with_lora_adapters(tiny, ["pirate", "poet"])
    ids = prompt_ids(tiny.tokenizer, PROMPTS[1])
    expected = {name: adapter_generate(tiny.model, ids, 16, name) for name in ("__base__", "pirate", "poet")}
    assert len({tuple(e[0].tolist()) for e in expected.values()}) == 3, "sanity check: the answers differ"
    for name in ("pirate", "__base__", "poet", "pirate"):  # switching back and forth, one decoder
        adapter = None if name == "__base__" else name
        assert decoder.adapter_problem(tiny.model, adapter) == ""
        assert torch.equal(decoder.generate(ids, 16, set(), adapter, tiny.model), expected[name]), name


def test_a_reloaded_adapter_is_decoded_with_its_new_weights():
    from tiny import with_lora_adapters

    tiny = fresh_tiny()
    decoder = NativeDecoder(tiny.model, max_len=128)
    with_lora_adapters(tiny, ["pirate", "poet"])
    ids = prompt_ids(tiny.tokenizer, PROMPTS[0])
    before = decoder.generate(ids, 12, set(), "poet", tiny.model)
    tiny.model.delete_adapter("poet")
    assert "not loaded" in decoder.adapter_problem(tiny.model, "poet")
    from peft import LoraConfig

    torch.manual_seed(7)
    tiny.model.add_adapter("poet", LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    tiny.model.eval()
    after = decoder.generate(ids, 12, set(), "poet", tiny.model)
    assert not torch.equal(after, before)
    assert torch.equal(after, adapter_generate(tiny.model, ids, 12, "poet"))


def test_adapters_it_cannot_compute_are_named():
    from peft import LoraConfig, get_peft_model

    tiny = fresh_tiny()
    decoder = NativeDecoder(tiny.model, max_len=64)
    model = get_peft_model(tiny.model, LoraConfig(r=4, target_modules="all-linear", use_dora=True), adapter_name="dora")
    model.add_adapter("head", LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    model.eval()
    assert "DoRA" in decoder.adapter_problem(model, "dora")
    assert "besides the blocks' linear ones" in decoder.adapter_problem(model, "head")
    assert "not loaded" in decoder.adapter_problem(model, "missing")
    assert decoder.adapter_problem(fresh_tiny().model, None) == "the generator's model is not this decoder's"
    with pytest.raises(ValueError, match="DoRA"):
        decoder.generate(prompt_ids(tiny.tokenizer, PROMPTS[0]), 4, set(), "dora", model)
