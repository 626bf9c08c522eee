import math

import pytest

from bot.settings import GenerationSettings


def test_greedy_when_temperature_is_zero():
    kwargs = GenerationSettings(max_new_tokens=5).generate_kwargs()
    assert kwargs["do_sample"] is False and kwargs["max_new_tokens"] == 5


def test_sampling_passes_temperature_and_top_p():
    kwargs = GenerationSettings(temperature=0.7, top_p=0.9).generate_kwargs()
    assert kwargs["do_sample"] is True and kwargs["temperature"] == 0.7 and kwargs["top_p"] == 0.9


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_new_tokens", 0, "max_new_tokens must be between 1 and 8192"),
        ("max_new_tokens", 2.5, "max_new_tokens must be a whole number"),
        ("temperature", -0.1, "temperature must be between 0 and 2"),
        ("temperature", math.nan, "temperature must be between 0 and 2"),
        ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
        ("top_p", math.inf, r"top_p must be in \(0, 1\]"),
        ("seed", -1, "seed must be a whole number from 0 to 9223372036854775807, got -1"),
        ("seed", 10**20, "seed must be a whole number from 0 to 9223372036854775807"),  # torch would overflow
        ("presence_penalty", 2.5, "presence_penalty must be between -2 and 2, got 2.5"),
        ("frequency_penalty", math.nan, "frequency_penalty must be between -2 and 2"),
        ("frequency_penalty", "1", "frequency_penalty must be between -2 and 2, got '1'"),
    ],
)
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**{field: value})
