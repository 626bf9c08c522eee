"""The batcher against a reference: the same requests answered one by one by the generator."""

import threading
from dataclasses import replace

import pytest
import torch

from bot.batching import Batcher
from bot.conversation import build_messages
from bot.generation import BASE, Generator
from bot.settings import GenerationSettings

ADAPTERS = {"alpha": 1, "beta": 2, "gamma": 3}
"""Adapter name -> seed of its random LoRA weights."""
PROMPTS = ["hello", "the quick brown fox jumps", "Paris", "你好，世界", "what is the capital", "movie review"]
SETTINGS = GenerationSettings(max_new_tokens=8)


def lora_config():
    from peft import LoraConfig

    # init_lora_weights=False draws B at random too, so each adapter changes the output from the start.
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                      init_lora_weights=False)


@pytest.fixture(scope="module")
def generator():
    """A generator over a fresh tiny model carrying three random adapters (not the shared `tiny`: peft changes it)."""
    from peft import get_peft_model
    from tiny import tiny_loaded

    loaded = tiny_loaded()
    (first, seed), *rest = ADAPTERS.items()
    torch.manual_seed(seed)
    model = get_peft_model(loaded.model, lora_config(), adapter_name=first)
    for name, seed in rest:
        torch.manual_seed(seed)
        model.add_adapter(name, lora_config())
    return Generator(replace(loaded, model=model.eval()))


def requests(count: int) -> list[tuple[list[dict], str]]:
    """(messages, adapter) pairs cycling through prompts and base plus every adapter."""
    names = [BASE, *ADAPTERS]
    return [(build_messages(PROMPTS[i % len(PROMPTS)]), names[i % len(names)]) for i in range(count)]


def serial_texts(generator, pairs) -> list[str]:
    return [generator.complete(messages, SETTINGS, adapter).text for messages, adapter in pairs]


def concurrently(batcher, pairs) -> list:
    """Submit every request from its own thread, all released at once; results in request order."""
    results = [None] * len(pairs)
    start = threading.Barrier(len(pairs))

    def call(index, messages, adapter):
        start.wait()
        results[index] = batcher.complete(messages, SETTINGS, adapter)

    threads = [threading.Thread(target=call, args=(i, *pair)) for i, pair in enumerate(pairs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_adapters_change_the_answers(generator):
    messages = build_messages(PROMPTS[1])
    answers = {name: generator.complete(messages, SETTINGS, name).text for name in [BASE, *ADAPTERS]}
    assert len(set(answers.values())) == len(answers), f"sanity check: adapters differ from base: {answers}"


def test_concurrent_requests_get_their_serial_answers(generator):
    pairs = requests(12)
    expected = serial_texts(generator, pairs)
    batcher = Batcher(generator, window_s=0.2, max_batch=8)
    try:
        got = concurrently(batcher, pairs)
    finally:
        batcher.close()
    assert [c.text for c in got] == expected


def test_requests_share_batches(generator, monkeypatch):
    sizes = []
    original = generator.complete_many

    def counting(conversations, settings, adapters):
        sizes.append(len(conversations))
        return original(conversations, settings, adapters)

    monkeypatch.setattr(generator, "complete_many", counting)
    batcher = Batcher(generator, window_s=0.5, max_batch=4)
    try:
        concurrently(batcher, requests(8))
    finally:
        batcher.close()
    assert sum(sizes) == 8 and max(sizes) == 4 and len(sizes) < 8


def test_different_settings_never_share_a_batch(generator, monkeypatch):
    seen = []
    original = generator.complete_many

    def recording(conversations, settings, adapters):
        seen.append(settings)
        return original(conversations, settings, adapters)

    monkeypatch.setattr(generator, "complete_many", recording)
    batcher = Batcher(generator, window_s=2, max_batch=8)  # wide: the three submits must share one window
    short = replace(SETTINGS, max_new_tokens=2)
    try:
        futures = [batcher.submit(build_messages("hello"), s) for s in (SETTINGS, short, SETTINGS)]
        done = [f.result() for f in futures]
    finally:
        batcher.close()
    assert sorted(seen, key=lambda s: s.max_new_tokens) == [short, SETTINGS]
    assert [c.completion_tokens <= s.max_new_tokens for c, s in zip(done, (SETTINGS, short, SETTINGS))] == [True] * 3


def test_unknown_adapter_is_refused_before_queueing(generator):
    batcher = Batcher(generator)
    try:
        with pytest.raises(ValueError, match="unknown adapter 'pirate'; available: base, alpha, beta, gamma"):
            batcher.submit(build_messages("hello"), SETTINGS, "pirate")
    finally:
        batcher.close()


def test_a_failing_batch_reaches_every_caller(generator, monkeypatch):
    def broken(conversations, settings, adapters):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(generator, "complete_many", broken)
    batcher = Batcher(generator, window_s=0.5)
    try:
        futures = [batcher.submit(build_messages(p), SETTINGS) for p in PROMPTS[:3]]
        for future in futures:
            with pytest.raises(RuntimeError, match="model exploded"):
                future.result()
    finally:
        batcher.close()


def test_close_answers_what_is_queued_then_refuses(generator):
    batcher = Batcher(generator, window_s=1.0)
    future = batcher.submit(build_messages("hello"), SETTINGS)
    batcher.close()
    assert future.result().text == generator.complete(build_messages("hello"), SETTINGS).text
    with pytest.raises(RuntimeError, match="the batcher is closed"):
        batcher.submit(build_messages("hello"), SETTINGS)


def test_invalid_window_is_refused(generator):
    with pytest.raises(ValueError, match="window_s must be at least 0"):
        Batcher(generator, window_s=-1)
