"""The load test (tests/stress.py), short: 8 users x 2 turns against `python app.py` on a tiny model
with two adapters, as chat sessions and as API clients. `make stress` runs the full 16 x 5 on the
default model."""

import pytest

from stress import conversations, request_kinds, run, save_random_adapters
from tiny import save_tiny


@pytest.mark.parametrize("client", ["ui", "api"])
def test_concurrent_users_get_their_own_answers_and_memory_stays_flat(tmp_path, client):
    model = save_tiny(tmp_path / "tiny")
    save_random_adapters(model, tmp_path / "adapters")
    report = run(model, tmp_path / "adapters", tmp_path / "home", users=8, turns=2, max_new_tokens=8, timeout=120,
                 client=client)
    assert report.requests == 8 * 2 + 8
    assert {kind for plan in conversations(2)[:8] for kind in plan} == set(request_kinds())  # all served at once
    assert report.problems(max_growth=0.15) == []
