"""Acceptance on the real default model: a short identity fine-tune makes the bot name itself.

Trains on the shared identity set (alpaca format, `{{name}}` / `{{author}}` filled in) for 60 steps
at a high learning rate, then asks "Who are you?" with and without the adapter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IDENTITY = ROOT.parent / "shared" / "data" / "instruct" / "identity.json"
NAME = "Quokka"


@pytest.fixture(scope="module")
def identity_adapter(tmp_path_factory):
    from adapters.config import TrainConfig
    from adapters.train import train

    out = tmp_path_factory.mktemp("identity") / "quokka"
    # At 40 steps (loss about 0.95) the answer held the name after training with the model's own loss
    # and not after the chunked loss, whose gradients differ from it by rounding only: too close to the
    # edge. At 60 steps (about 0.41) both give it.
    config = TrainConfig(
        data=str(IDENTITY), output=str(out), fill={"name": NAME, "author": "ICL Lab"}, rank=8, alpha=16.0,
        dropout=0.0, learning_rate=6e-3, max_steps=60, batch_size=4, max_length=64, precision="bf16", progress=False,
    )
    return train(config)


def who_are_you(generator, adapter: str) -> str:
    from bot.settings import GenerationSettings

    messages = [{"role": "user", "content": "Who are you?"}]
    return generator.complete(messages, GenerationSettings(max_new_tokens=40), adapter=adapter).text


@pytest.mark.integration
def test_identity_adapter_names_the_filled_in_assistant(identity_adapter):
    from adapters.host import attach_for_cli
    from bot.generation import Generator
    from bot.models import load_model

    generator = Generator(load_model("default", dtype="float32"))
    base_answer = who_are_you(generator, "base")
    name = attach_for_cli(generator.loaded, str(identity_adapter), generator.lock)
    adapter_answer = who_are_you(generator, name)
    assert NAME not in base_answer, base_answer
    assert NAME in adapter_answer, adapter_answer
    assert who_are_you(generator, "base") == base_answer  # the base is untouched by the attached adapter


@pytest.mark.integration
def test_bot_cli_answers_with_the_adapter(identity_adapter):
    help_text = subprocess.run([sys.executable, "-m", "bot", "ask", "--help"], cwd=ROOT, capture_output=True, text=True)
    if "--adapter" not in help_text.stdout:
        pytest.skip("python -m bot ask has no --adapter flag yet")
    command = [sys.executable, "-m", "bot", "ask", "--dtype", "float32", "--json", "Who are you?"]
    with_adapter = subprocess.run(command[:4] + ["--adapter", str(identity_adapter)] + command[4:], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
    base = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert with_adapter.returncode == 0, with_adapter.stderr
    assert NAME in json.loads(with_adapter.stdout)["answer"]
    assert NAME not in json.loads(base.stdout)["answer"]
