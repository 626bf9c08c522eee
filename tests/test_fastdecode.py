"""The fast decoder against a reference: plain greedy `model.generate` on the same weights."""

import pytest
import torch

from bot.fastdecode import FastDecoder, Int4Linear, quantize, round_to_int8

PROMPTS = ["hello", "the quick brown fox jumps", "你好，世界"]


def prompt_ids(tokenizer, text: str):
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)["input_ids"]


def plain(model, ids, tokens: int):
    with torch.inference_mode():
        # An explicit mask: generate would otherwise mask every prompt token equal to pad_token_id.
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
                              pad_token_id=0, eos_token_id=None)


def fresh_tiny(seed: int = 0):
    from tiny import tiny_loaded

    return tiny_loaded(seed)


def make_q4_1(model) -> None:
    """Give every block linear layer Q4_1-shaped weights: per 32 inputs, fp16 d times q in 0..15 plus fp16 m."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, torch.nn.Linear):
                out, inp = module.weight.shape
                q = torch.randint(0, 16, (out, inp // 32, 32), generator=generator).float()
                q[..., 0], q[..., 1] = 0, 15  # Q4_1 maps each block's min to 0 and its max to 15
                d = (torch.rand(out, inp // 32, 1, generator=generator) * 0.04 + 0.01).half().float()
                m = (-7.5 * d - 0.01 * torch.rand(out, inp // 32, 1, generator=generator)).half().float()
                module.weight.copy_((d * q + m).reshape(out, inp))


@pytest.mark.parametrize("text", PROMPTS)
def test_eager_loop_equals_generate(tiny, text):
    ids = prompt_ids(tiny.tokenizer, text)
    assert torch.equal(FastDecoder(tiny.model, max_len=64, compile=False).generate(ids, 24, set()),
                       plain(tiny.model, ids, 24))


def test_compiled_loop_equals_generate_across_requests(tiny):
    decoder = FastDecoder(tiny.model, max_len=64, compile=True)
    for text in PROMPTS[:2]:  # the second request reuses the compiled step and the cache
        ids = prompt_ids(tiny.tokenizer, text)
        assert torch.equal(decoder.generate(ids, 16, set()), plain(tiny.model, ids, 16))


def test_stops_after_the_end_of_turn_token(tiny):
    ids = prompt_ids(tiny.tokenizer, PROMPTS[1])
    first, second = plain(tiny.model, ids, 2)[0, ids.shape[1]:].tolist()
    assert first != second, "sanity check: the stop token is not also the next one"
    assert list(FastDecoder(tiny.model, max_len=64, compile=False).tokens(ids, 10, {second})) == [first, second]


def test_int8_equals_generate_on_the_rounded_weights():
    loaded = fresh_tiny()
    ids = prompt_ids(loaded.tokenizer, PROMPTS[0])
    round_to_int8(loaded.model)
    packed = quantize(loaded.model, "int8")
    assert type(loaded.model.model.layers[0].mlp.up_proj) is torch.nn.Linear, "the original model is unchanged"
    assert torch.equal(FastDecoder(packed, max_len=64, compile=False).generate(ids, 24, set()),
                       plain(loaded.model, ids, 24))


def test_int4_exact_equals_generate_on_q4_1_weights():
    loaded = fresh_tiny()
    make_q4_1(loaded.model)
    ids = prompt_ids(loaded.tokenizer, PROMPTS[1])
    packed = quantize(loaded.model, "int4-exact")
    assert isinstance(packed.model.layers[0].self_attn.q_proj, Int4Linear)
    assert torch.equal(FastDecoder(packed, max_len=64, compile=False).generate(ids, 24, set()),
                       plain(loaded.model, ids, 24))


def test_int4_exact_refuses_weights_that_are_not_int4(tiny):
    with pytest.raises(ValueError, match="not exactly int4 in groups of 32"):
        quantize(tiny.model, "int4-exact")


def test_unknown_quantization_is_refused_by_name(tiny):
    with pytest.raises(ValueError, match="unknown quantization 'fp4'; choose one of: none, int8, int4-exact"):
        quantize(tiny.model, "fp4")


def test_too_long_a_request_is_refused(tiny):
    ids = prompt_ids(tiny.tokenizer, PROMPTS[0])
    with pytest.raises(ValueError, match="exceeds max_len 16"):
        list(FastDecoder(tiny.model, max_len=16, compile=False).tokens(ids, 32, set()))


@pytest.mark.integration
def test_default_model_compiled_loop_and_int4_equal_generate(default_model):
    ids = prompt_ids(default_model.tokenizer, "Explain in-context learning in two sentences.")
    expected = plain(default_model.model, ids, 32)
    assert torch.equal(FastDecoder(default_model.model, max_len=128).generate(ids, 32, set()), expected)
    packed = quantize(default_model.model, "int4-exact")  # the default's weights are dequantized Q4_1
    assert torch.equal(FastDecoder(packed, max_len=128).generate(ids, 32, set()), expected)
