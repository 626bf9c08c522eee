"""ZeroGPU: with a `spaces` module present, model calls run under spaces.GPU with a sized lease."""

import sys
import types

from bot.completions import complete_tokens
from bot.conversation import build_messages
from bot.generation import Generator
from bot.settings import GenerationSettings
from bot.zerogpu import lease_seconds


def test_without_spaces_nothing_is_wrapped(tiny):
    assert "spaces" not in sys.modules
    generator = Generator(tiny)
    assert generator._generate.__func__ is Generator._generate


def test_with_spaces_each_call_gets_a_lease_sized_to_the_request(tiny, monkeypatch):
    leases = []

    def gpu(duration):
        def wrap(fn):
            def leased(*args, **kwargs):
                leases.append(duration(*args, **kwargs))
                return fn(*args, **kwargs)
            return leased
        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    generator = Generator(tiny)
    settings = GenerationSettings(max_new_tokens=40)
    plain = Generator.__new__(Generator)
    plain.__dict__.update(loaded=tiny, lock=generator.lock, fast=None)
    plain._generate = Generator._generate.__get__(plain)
    answer = generator.complete(build_messages("hello"), settings)
    assert answer.text == plain.complete(build_messages("hello"), settings).text
    generator.complete_many([build_messages("a"), build_messages("b")], settings, ["base", "base"])
    assert leases == [lease_seconds(1, 40), lease_seconds(2, 40)]
    complete_tokens(generator, [[5, 6, 7], [8, 9]], 0, settings, logprobs=0)  # a scoring pass only
    assert leases[2:] == [lease_seconds(2, 1)]


def test_with_spaces_fast_decoding_stays_off_so_every_call_is_leased(tiny, monkeypatch):
    assert Generator(tiny, fast_decode=True).fast is not None, "sanity check: off ZeroGPU it is on"
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=lambda duration: lambda fn: fn))
    generator = Generator(tiny, fast_decode=True)
    assert generator.fast is None and "ZeroGPU" in generator.fast_note
