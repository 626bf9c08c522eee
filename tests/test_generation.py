"""The generator against a reference: the same model's plain `generate` call."""

import threading

import pytest
import torch

from bot.conversation import build_messages, count_prompt_tokens
from bot.generation import Generator, StreamState
from bot.settings import GenerationSettings


def reference(tiny, messages, max_new_tokens):
    ids = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = tiny.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return tiny.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_complete_equals_plain_generate(tiny):
    messages = build_messages("the quick brown fox", system="sys")
    completion = Generator(tiny).complete(messages, GenerationSettings(max_new_tokens=12))
    assert completion.text == reference(tiny, messages, 12)
    assert completion.completion_tokens == 12 and completion.finish_reason == "length"
    assert completion.prompt_tokens == count_prompt_tokens(tiny.tokenizer, messages)


def test_stream_pieces_join_to_the_completion(tiny):
    messages = build_messages("what is the capital of France?")
    settings = GenerationSettings(max_new_tokens=16)
    pieces = list(Generator(tiny).stream(messages, settings))
    assert len(pieces) > 1
    assert "".join(pieces) == reference(tiny, messages, 16)


def test_seeded_sampling_is_reproducible(tiny):
    messages = build_messages("positive negative")
    settings = GenerationSettings(max_new_tokens=10, temperature=1.5, seed=3)
    generator = Generator(tiny)
    assert generator.complete(messages, settings).text == generator.complete(messages, settings).text


def test_cancel_stops_generation_early(tiny):
    state = StreamState()
    stream = Generator(tiny).stream(build_messages("hello"), GenerationSettings(max_new_tokens=200), state=state)
    next(stream)
    state.cancel.set()
    list(stream)
    assert state.completion.finish_reason == "cancelled"
    assert state.completion.completion_tokens < 200


def test_closing_the_stream_stops_the_model(tiny):
    generator = Generator(tiny)
    state = StreamState()
    stream = generator.stream(build_messages("hello"), GenerationSettings(max_new_tokens=500), state=state)
    next(stream)
    stream.close()  # what Gradio does when the user presses stop
    assert state.cancel.is_set()
    assert generator.lock.acquire(timeout=5), "the generation thread still holds the model"
    generator.lock.release()


def test_errors_in_the_model_thread_reach_the_caller(tiny, monkeypatch):
    generator = Generator(tiny)
    monkeypatch.setattr(generator, "_generate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        generator.complete(build_messages("hello"), GenerationSettings(max_new_tokens=4))


def test_concurrent_requests_get_their_own_answers(tiny):
    generator = Generator(tiny)
    prompts = [f"question {i} about the lazy dog" for i in range(6)]
    settings = GenerationSettings(max_new_tokens=8)
    serial = [generator.complete(build_messages(p), settings).text for p in prompts]
    results = [None] * len(prompts)

    def ask(i):
        results[i] = generator.complete(build_messages(prompts[i]), settings).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == serial


def test_answer_is_capped_by_the_context_window(tiny):
    """Asking for more tokens than the window holds generates up to the window, not past it."""
    state = StreamState()
    settings = GenerationSettings(max_new_tokens=1000)
    list(Generator(tiny).stream(build_messages("hello"), settings, state=state))
    window = tiny.context_window
    assert state.completion.prompt_tokens + state.completion.completion_tokens <= window


def test_batched_answers_equal_one_by_one_answers(tiny):
    generator = Generator(tiny)
    conversations = [build_messages(p) for p in ["hello", "the quick brown fox jumps", "Paris", "你好，世界"]]
    settings = GenerationSettings(max_new_tokens=10)
    serial = [generator.complete(c, settings) for c in conversations]
    assert len({s.text for s in serial}) == len(serial), "sanity check: the prompts get different answers"
    batched = generator.complete_many(conversations, settings, ["base"] * len(conversations))
    assert [b.text for b in batched] == [s.text for s in serial]
    assert [b.prompt_tokens for b in batched] == [s.prompt_tokens for s in serial]


def test_a_cancelled_batch_ends_every_row_at_once(tiny):
    """`cancel` set before the call: each row gets the one token generate takes before checking it,
    the start of its uncancelled answer, marked cancelled."""
    import threading

    generator = Generator(tiny)
    conversations = [build_messages(p) for p in ["hello", "the quick brown fox jumps"]]
    settings = GenerationSettings(max_new_tokens=20)
    full = generator.complete_many(conversations, settings, ["base", "base"])
    cancel = threading.Event()
    cancel.set()
    cut = generator.complete_many(conversations, settings, ["base", "base"], cancel=cancel)
    assert [c.finish_reason for c in full] == ["length"] * 2 and [c.completion_tokens for c in full] == [20, 20]
    assert [c.finish_reason for c in cut] == ["cancelled"] * 2 and [c.completion_tokens for c in cut] == [1, 1]
    assert all(f.text.startswith(c.text) for f, c in zip(full, cut))
    whole = generator.complete_many(conversations, GenerationSettings(max_new_tokens=1), ["base", "base"], cancel=cancel)
    assert [c.finish_reason for c in whole] == ["length"] * 2  # it got all it asked for: the cancel cut nothing


def test_unknown_adapter_is_refused_by_name(tiny):
    with pytest.raises(ValueError, match="unknown adapter 'pirate'; available: base"):
        Generator(tiny).complete(build_messages("hello"), GenerationSettings(max_new_tokens=2), adapter="pirate")


def test_concurrent_adapters_never_cross_in_bf16():
    """bf16 is the default dtype on CPU: each request must get its own adapter's answer."""
    from tiny import tiny_loaded, with_lora_adapters

    loaded = with_lora_adapters(tiny_loaded(), ["pirate", "poet", "sage"])
    loaded.model.to(torch.bfloat16)
    generator = Generator(loaded)
    settings = GenerationSettings(max_new_tokens=8)
    names = ["base", "pirate", "poet", "sage"] * 2
    alone = {name: generator.complete(build_messages("hello"), settings, name).text for name in set(names)}
    assert len(set(alone.values())) == 4, "sanity check: the adapters are easy to tell apart"
    results = [None] * len(names)

    def ask(i):
        results[i] = generator.complete(build_messages("hello"), settings, names[i]).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(names))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [alone[name] for name in names]


def penalised_by_hand(tiny, prompt_ids: list[int], tokens: int, presence: float, frequency: float,
                      **model_kwargs) -> list[int]:
    """Greedy decoding written out: the whole sequence through the model each step, OpenAI's
    penalties applied to the last logits from a count of the answer's own tokens."""
    ids, answer = list(prompt_ids), []
    with torch.inference_mode():
        for _ in range(tokens):
            logits = tiny.model(input_ids=torch.tensor([ids]), **model_kwargs).logits[0, -1].double()
            for token in set(answer):
                logits[token] -= presence + frequency * answer.count(token)
            answer.append(int(logits.argmax()))
            ids.append(answer[-1])
    return answer


@pytest.mark.parametrize("presence, frequency", [(0.0, 1.5), (2.0, 0.0), (-1.0, 0.5)])
def test_presence_and_frequency_penalties_match_openais_definition(tiny, presence, frequency):
    """One by one and batched (left-padded rows), against the loop written out; the penalties must
    change an answer, or the test could not tell them applied."""
    generator = Generator(tiny)
    conversations = [build_messages(p) for p in ["the quick brown fox", "hello"]]
    penalised = GenerationSettings(max_new_tokens=24, presence_penalty=presence, frequency_penalty=frequency)
    expected = []
    for messages in conversations:
        ids = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        expected.append(tiny.tokenizer.decode(penalised_by_hand(tiny, ids, 24, presence, frequency),
                                              skip_special_tokens=True))
    plain = [generator.complete(c, GenerationSettings(max_new_tokens=24)).text for c in conversations]
    assert plain != expected, "sanity check: the penalties change an answer"
    assert [generator.complete(c, penalised).text for c in conversations] == expected
    assert [c.text for c in generator.complete_many(conversations, penalised, ["base", "base"])] == expected


def test_batched_rows_end_at_their_stop_string(tiny):
    """A row whose text reaches a stop string ends there, as a shorter answer of its own; the others
    run on. (n chat answers with `stop` ran every row to max_new_tokens.)"""
    generator = Generator(tiny)
    conversations = [build_messages(p) for p in ["hello", "the quick brown fox", "Paris"]]
    settings = GenerationSettings(max_new_tokens=24)
    full = generator.complete_many(conversations, settings, ["base"] * 3)
    text = full[0].text
    stop = next(text[i:i + 2] for i in range(4, len(text) - 1)  # from row 0's answer, and not in every row's
                if text[i:i + 2].strip() and any(text[i:i + 2] not in answer.text for answer in full))
    cut = generator.complete_many(conversations, settings, ["base"] * 3, stops=("never there", stop))
    for whole, short in zip(full, cut):
        if stop in whole.text:
            assert whole.text.startswith(short.text) and stop in short.text and short.finish_reason == "stop"
            assert short.completion_tokens < whole.completion_tokens
        else:
            assert (short.text, short.completion_tokens, short.finish_reason) == (
                whole.text, whole.completion_tokens, whole.finish_reason)
