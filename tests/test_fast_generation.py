"""`Generator(fast_decode=True)`: each fast decoder behind the chat gives `generate`'s answers."""

import pytest

from bot.conversation import build_messages
from bot.generation import Generator, StreamState
from bot.settings import GenerationSettings
from tiny import tiny_loaded, with_lora_adapters

QUESTIONS = ["the quick brown fox", "what is the capital of France?", "great movie review"]
GREEDY = GenerationSettings(max_new_tokens=24)


def answers(generator, settings=GREEDY):
    done = [generator.complete(build_messages(q), settings) for q in QUESTIONS]
    return [(c.text, c.completion_tokens, c.finish_reason, c.prompt_tokens) for c in done]


def counting(generator) -> list:
    """Record each use of the generator's fast decoder (so a test knows the fast path ran)."""
    calls, tokens = [], generator.fast.tokens

    def counted(*args, **kwargs):
        calls.append(args[1])
        return tokens(*args, **kwargs)

    generator.fast.tokens = counted
    return calls


@pytest.mark.parametrize("decoder", ["native", "compiled", "eager"])
def test_fast_answers_equal_generate(decoder):
    loaded = tiny_loaded()
    fast = Generator(loaded, fast_decode=True, decoder=decoder)
    assert decoder in fast.fast_note
    calls = counting(fast)
    assert answers(fast) == answers(Generator(loaded))
    assert calls == [GREEDY.max_new_tokens] * len(QUESTIONS)


@pytest.mark.parametrize("decoder", ["native", "eager"])
def test_a_biased_or_penalised_request_is_left_to_generate(decoder):
    """The fast decoders know neither: such a greedy request goes to `generate`, as one without them goes fast."""
    loaded = tiny_loaded()
    fast = Generator(loaded, fast_decode=True, decoder=decoder)
    calls = counting(fast)
    for shaped in (GenerationSettings(max_new_tokens=24, frequency_penalty=1.5),
                   GenerationSettings(max_new_tokens=24, logit_bias=((5, 3.0),))):
        assert answers(fast, shaped) == answers(Generator(loaded), shaped) != answers(Generator(loaded))
    assert calls == []


@pytest.mark.parametrize("decoder", ["native", "eager"])
def test_fast_answers_stop_at_the_end_of_turn_like_generate(monkeypatch, decoder):
    """Make a token the model writes early its end-of-turn token: both paths must stop there."""
    loaded = tiny_loaded()
    plain = Generator(loaded)
    ids = loaded.tokenizer.apply_chat_template(build_messages(QUESTIONS[0]), add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)["input_ids"]
    fast = Generator(loaded, fast_decode=True, decoder=decoder)
    third = list(fast.fast.tokens(ids, 5, eos_ids=set()))[2]
    monkeypatch.setattr(loaded.model.generation_config, "eos_token_id", third)
    expected = answers(plain)
    assert expected[0][2] == "stop" and expected[0][1] <= 3, "sanity check: the new end-of-turn token ends answer 0"
    calls = counting(fast)
    assert answers(fast) == expected and len(calls) == len(QUESTIONS)


@pytest.mark.parametrize("decoder", ["native", "eager"])
def test_fast_stream_yields_pieces_and_stops_when_cancelled(decoder):
    generator = Generator(tiny_loaded(), fast_decode=True, decoder=decoder)
    calls = counting(generator)
    state = StreamState()
    pieces = list(generator.stream(build_messages("hello"), GREEDY, state=state))
    assert len(pieces) > 1 and "".join(pieces) == state.completion.text

    state = StreamState()
    stream = generator.stream(build_messages("hello"), GenerationSettings(max_new_tokens=500), state=state)
    next(stream)
    state.cancel.set()
    list(stream)
    # < 500, not a tighter bound: the decoder runs on in its own thread until it sees the flag.
    assert state.completion.finish_reason == "cancelled" and state.completion.completion_tokens < 500
    assert calls == [24, 500], "both requests went through the fast decoder"

    stream = generator.stream(build_messages("hello"), GenerationSettings(max_new_tokens=500), state=StreamState())
    next(stream)
    stream.close()  # what Gradio does when the user presses stop
    assert generator.lock.acquire(timeout=5), "the decode thread still holds the model"
    generator.lock.release()


@pytest.mark.parametrize("decoder", ["native", "compiled"])
def test_fast_decoding_is_refused_where_it_would_answer_differently(monkeypatch, decoder):
    loaded = tiny_loaded()
    monkeypatch.setattr(loaded.model.generation_config, "repetition_penalty", 1.1)
    with pytest.raises(ValueError, match="generation config sets repetition_penalty"):
        Generator(loaded, fast_decode=True, decoder=decoder)
    assert Generator(loaded, fast_decode=True).fast is None, "auto turns fast decoding off instead"
    monkeypatch.setattr(loaded, "device", "cuda")
    with pytest.raises(ValueError, match="fast decoding is for models on the CPU; this one is on cuda"):
        Generator(loaded, fast_decode=True, decoder=decoder)
    assert "this one is on cuda" in Generator(loaded, fast_decode=True).fast_note


def test_sampled_and_adapter_requests_take_the_generate_path(monkeypatch):
    loaded = with_lora_adapters(tiny_loaded(), ["pirate"])
    generator = Generator(loaded, fast_decode=True, decoder="eager")

    def refuse(*args, **kwargs):
        raise AssertionError("the fast decoder must not serve this request")

    monkeypatch.setattr(generator.fast, "tokens", refuse)
    sampled = GenerationSettings(max_new_tokens=8, temperature=0.7, seed=1)
    assert generator.complete(build_messages("hi"), sampled).completion_tokens == 8
    assert generator.complete(build_messages("hi"), GREEDY, adapter="pirate").completion_tokens == 24
    assert generator.complete(build_messages("hi"), GREEDY).completion_tokens == 24  # adapters loaded: base too


def test_auto_takes_the_native_decoder_where_it_can_and_says_why_not():
    from bot.native import NativeDecoder

    loaded = tiny_loaded()
    assert isinstance(Generator(loaded, fast_decode=True).fast, NativeDecoder)
    with pytest.raises(ValueError, match="unknown decoder 'turbo'"):
        Generator(loaded, fast_decode=True, decoder="turbo")

    loaded.model.config.hidden_act = "gelu"  # the C code computes silu only
    generator = Generator(loaded, fast_decode=True)
    assert generator.fast is None and "activation 'gelu' is not silu" in generator.fast_note
    assert generator.complete(build_messages("hi"), GREEDY).completion_tokens == 24, "plain generate answers"
    with pytest.raises(ValueError, match="activation 'gelu' is not silu"):
        Generator(loaded, fast_decode=True, decoder="native")


def test_native_decoder_answers_adapter_requests_like_generate():
    loaded = tiny_loaded()
    generator = Generator(loaded, fast_decode=True)  # built on the plain model; adapters come later
    calls = counting(generator)
    with_lora_adapters(loaded, ["pirate", "poet"])
    plain = Generator(loaded)
    expected = {name: plain.complete(build_messages("hi"), GREEDY, name).text for name in ("pirate", "base", "poet")}
    assert len(set(expected.values())) == 3, "sanity check: base and adapters answer differently"
    for name in ("pirate", "base", "poet", "pirate"):
        assert generator.complete(build_messages("hi"), GREEDY, name).text == expected[name]
    assert len(calls) == 4, "every greedy request went through the native decoder"
    sampled = GenerationSettings(max_new_tokens=8, temperature=0.7, seed=1)
    assert generator.complete(build_messages("hi"), sampled, "poet").text == plain.complete(
        build_messages("hi"), sampled, "poet").text
    assert len(calls) == 4, "a sampled request takes the generate path"
