"""The remote backend against our own API server: answers equal the local backend's (fp32, greedy)."""

import json
import subprocess
import sys

import pytest

from bot.conversation import build_messages
from bot.generation import Generator
from bot.remote import RemoteError, RemoteGenerator
from bot.service import ChatService
from bot.settings import GenerationSettings
from servers import ROOT, gradio_client, running_app, serving
from tiny import tiny_loaded, with_lora_adapters

SETTINGS = GenerationSettings(max_new_tokens=10)


@pytest.fixture(scope="module")
def server():
    import app

    local = Generator(with_lora_adapters(tiny_loaded(), ["pirate", "poet"]))
    with serving(app.create_server(ChatService(local), api_key="k")) as url:
        yield local, f"{url}/v1"


def test_remote_lists_the_servers_models(server):
    local, url = server
    remote = RemoteGenerator(url, api_key="k")
    assert remote.name == "tiny-llama"
    assert remote.resident_adapters() == ["pirate", "poet"]


@pytest.mark.parametrize("adapter", ["base", "pirate", "poet"])
def test_remote_answers_equal_local_answers(server, adapter):
    local, url = server
    remote = RemoteGenerator(url, api_key="k", tokenizer=local.tokenizer)
    messages = build_messages("the quick brown fox", system="sys")
    mine = remote.complete(messages, SETTINGS, adapter)
    theirs = local.complete(messages, SETTINGS, adapter)
    assert mine.text == theirs.text
    assert (mine.prompt_tokens, mine.completion_tokens) == (theirs.prompt_tokens, theirs.completion_tokens)
    assert remote.render(messages) == local.render(messages)


def test_remote_service_compare_keeps_adapters_apart(server):
    local, url = server
    service = ChatService(RemoteGenerator(url, api_key="k", tokenizer=local.tokenizer))
    names = ["base", "pirate", "poet", "pirate"]
    results = service.compare("hello there", names, settings=SETTINGS)
    expected = [local.complete(build_messages("hello there"), SETTINGS, name).text for name in names]
    assert len(set(expected)) == 3, "sanity check: the adapters answer differently"
    assert [r.text for r in results] == expected


def test_remote_errors_carry_the_servers_message(server):
    _, url = server
    with pytest.raises(RemoteError, match="401: invalid or missing API key"):
        RemoteGenerator(url, api_key="wrong")
    remote = RemoteGenerator(url, api_key="k")
    with pytest.raises(RemoteError, match="404: unknown model 'nobody'"):
        remote.complete(build_messages("hi"), SETTINGS, "nobody")


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(RemoteError, match="cannot reach http://127.0.0.1:9/v1"):
        RemoteGenerator("http://127.0.0.1:9/v1")


@pytest.mark.integration
def test_second_instance_answers_like_the_first():
    question = "Name three colours of the rainbow."
    with running_app("--dtype", "float32") as first:
        direct = gradio_client(first).predict(question, "You are a helpful assistant.", 48, 0, 1, "base", "(none)", "few", 4,
                                       "knn", "nearest-last", api_name="/chat")[0]
        cli = subprocess.run(
            [sys.executable, "-m", "bot", "ask", "--backend", "openai", "--base-url", f"{first}v1", "--json",
             "--system", "You are a helpful assistant.", "--max-new-tokens", "48", question],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        assert cli.returncode == 0, cli.stderr
        with running_app("--backend", "openai", "--base-url", f"{first}v1") as second:
            relayed = gradio_client(second).predict(question, "You are a helpful assistant.", 48, 0, 1, "base", "(none)",
                                             "few", 4, "knn", "nearest-last", api_name="/chat")[0]
    assert json.loads(cli.stdout)["answer"] == direct
    assert relayed == direct
