"""The remote backend against our own API server: answers equal the local backend's (fp32, greedy)."""

import json
import os
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


@pytest.fixture(scope="module")
def several_models():
    """A stand-in for an Ollama-like server: two base models, an adapter of the second, a model whose
    stream fails half-way (with an error event, as vLLM sends one), and no usage in any stream."""
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    api, asked = FastAPI(), []
    listed = [{"id": "llama3.2"}, {"id": "qwen2.5:7b"}, {"id": "qwen-kelp", "parent": "qwen2.5:7b"},
              {"id": "broken"}]

    @api.get("/v1/models")
    def models():
        return {"object": "list", "data": listed}

    @api.post("/v1/chat/completions")
    async def chat(request: Request):
        model = (await request.json())["model"]
        asked.append(model)

        def events():
            for piece in ["the quick", " brown fox"]:
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
                if model == "broken":
                    yield f"data: {json.dumps({'error': {'message': 'out of memory', 'code': 500}})}\n\n"
                    return
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with serving(api) as url:
        yield f"{url}/v1", asked


def test_a_server_with_several_models_asks_the_one_chosen(several_models):
    url, asked = several_models
    with pytest.raises(RemoteError, match=r"serves several models \(llama3.2, qwen2.5:7b, broken\); choose one"):
        RemoteGenerator(url)
    with pytest.raises(RemoteError, match="has no base model 'mistral'; it lists: llama3.2, qwen2.5:7b, qwen-kelp"):
        RemoteGenerator(url, model="mistral")
    remote = RemoteGenerator(url, model="qwen2.5:7b", tokenizer=tiny_loaded().tokenizer)
    assert remote.name == "qwen2.5:7b" and remote.resident_adapters() == ["qwen-kelp"]
    answer = remote.complete(build_messages("hi"), SETTINGS)
    assert asked[-1] == "qwen2.5:7b" and answer.text == "the quick brown fox"
    # the stream carried no usage: the answer's tokens are counted, not its two pieces
    assert answer.completion_tokens == len(remote.tokenizer("the quick brown fox", add_special_tokens=False)["input_ids"])
    assert answer.completion_tokens > 2


def test_an_error_in_the_middle_of_a_stream_is_raised_not_taken_for_the_end(several_models):
    url, _ = several_models
    remote = RemoteGenerator(url, model="broken")
    with pytest.raises(RemoteError, match="failed during the answer: out of memory"):
        remote.complete(build_messages("hi"), SETTINGS)


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


def test_a_logit_bias_reaches_the_server(server):
    local, url = server
    remote = RemoteGenerator(url, api_key="k", tokenizer=local.tokenizer)
    fox = local.tokenizer(" fox", add_special_tokens=False)["input_ids"][0]
    biased = GenerationSettings(max_new_tokens=4, logit_bias=((fox, 100.0),))
    messages = build_messages("hello there")
    assert remote.complete(messages, biased).text == local.complete(messages, biased).text == " fox" * 4


def test_penalties_reach_the_server(server):
    local, url = server
    remote = RemoteGenerator(url, api_key="k", tokenizer=local.tokenizer)
    messages = build_messages("hello")
    penalised = GenerationSettings(max_new_tokens=24, presence_penalty=0.5, frequency_penalty=1.5)
    expected = local.complete(messages, penalised).text
    assert expected != local.complete(messages, GenerationSettings(max_new_tokens=24)).text, "sanity check"
    assert remote.complete(messages, penalised).text == expected


def test_repeated_requests_in_one_seeded_batch_draw_apart_as_local_rows_do(server):
    """n answers of one prompt: the second copy gets the next seed; another adapter keeps the seed."""
    from dataclasses import replace

    local, url = server
    remote = RemoteGenerator(url, api_key="k", tokenizer=local.tokenizer)
    messages = build_messages("hello")
    seeded = GenerationSettings(max_new_tokens=8, temperature=1.5, seed=3)
    answers = [c.text for c in remote.complete_many([messages] * 3, seeded, ["base", "base", "poet"])]
    assert answers == [local.complete(messages, seeded).text, local.complete(messages, replace(seeded, seed=4)).text,
                       local.complete(messages, seeded, "poet").text]
    assert answers[0] != answers[1]


def test_asking_a_remote_server_needs_no_data_folder(server, tmp_path):
    """Nothing is cached or read here without a pool; the data folder used to be made all the same."""
    local, url = server
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cli = subprocess.run([sys.executable, "-m", "bot", "ask", "--backend", "openai", "--base-url", url, "--api-key", "k",
                          "--json", "--max-new-tokens", "10", "hello there"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "ICL_BOT_HOME": str(blocker / "home")})
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["answer"] == local.complete(build_messages("hello there"), SETTINGS).text
