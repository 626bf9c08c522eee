"""The OpenAI-compatible API, driven by the official `openai` client and by raw HTTP."""

import json
import urllib.error
import urllib.request

import openai
import pytest

from bot.conversation import build_messages
from bot.generation import Generator
from bot.service import ChatService
from bot.settings import GenerationSettings
from retrieval.embedder import HashEmbedder
from retrieval.library import PoolLibrary
from servers import serving
from tiny import tiny_loaded, with_lora_adapters

KEY = "test-key"
ADAPTERS = ["pirate", "poet"]


@pytest.fixture(scope="module")
def api():
    import app

    loaded = with_lora_adapters(tiny_loaded(), ADAPTERS)
    service = ChatService(Generator(loaded))
    with serving(app.create_server(service, api_key=KEY)) as url:
        yield service, url


@pytest.fixture(scope="module")
def pools_api(tmp_path_factory):
    """A server with a pool library and, as by default, no API key."""
    import app

    library = PoolLibrary(root=tmp_path_factory.mktemp("indexes"), embedder=HashEmbedder())
    service = ChatService(Generator(tiny_loaded()), library)
    with serving(app.create_server(service)) as url:
        yield service, url


def client(url, key=KEY):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def expected(service, adapter, text, tokens=8):
    return service.generator.complete(build_messages(text), GenerationSettings(max_new_tokens=tokens), adapter).text


def post(url, path, body, key=KEY) -> tuple[int, dict]:
    """The status and JSON body of a raw POST to /v1`path`, error responses included."""
    request = urllib.request.Request(
        f"{url}/v1{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def chat_body(**extra) -> dict:
    return {"model": "tiny-llama", "messages": [{"role": "user", "content": "a wonderful film"}], **extra}


def test_models_lists_base_and_adapters_with_parent(api):
    service, url = api
    models = {m.id: m for m in client(url).models.list().data}
    assert set(models) == {"tiny-llama", *ADAPTERS}
    assert all(models[name].model_extra["parent"] == "tiny-llama" for name in ADAPTERS)


@pytest.mark.parametrize("model, adapter", [("tiny-llama", "base"), ("pirate", "pirate"), ("poet", "poet")])
def test_each_model_answers_with_its_own_weights(api, model, adapter):
    service, url = api
    answers = {name: expected(service, name, "hello there") for name in ["base", *ADAPTERS]}
    assert len(set(answers.values())) == 3, "sanity check: base and adapters answer differently"
    response = client(url).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=8, temperature=0
    )
    assert response.choices[0].message.content == answers[adapter]
    assert response.usage.completion_tokens == 8 and response.choices[0].finish_reason == "length"


def test_streaming_chunks_join_to_the_same_answer(api):
    service, url = api
    stream = client(url).chat.completions.create(
        model="poet", messages=[{"role": "user", "content": "the quick brown fox"}], max_tokens=40, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == expected(service, "poet", "the quick brown fox", 40)
    assert chunks[-1].usage.completion_tokens == 40


def test_system_and_history_reach_the_model(api):
    service, url = api
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    messages = [{"role": "system", "content": "be brief"}, *history, {"role": "user", "content": "and now"}]
    response = client(url).chat.completions.create(model="tiny-llama", messages=messages, max_tokens=6)
    reference = service.generator.complete(
        build_messages("and now", history, "be brief"), GenerationSettings(max_new_tokens=6)
    )
    assert response.choices[0].message.content == reference.text


def test_wrong_key_is_401(api):
    _, url = api
    with pytest.raises(openai.AuthenticationError, match="invalid or missing API key"):
        client(url, key="nope").models.list()


def test_unknown_model_is_404(api):
    _, url = api
    with pytest.raises(openai.NotFoundError, match="unknown model 'gpt-9'; available: tiny-llama, pirate, poet"):
        client(url).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400,
         "temperature must be between 0 and 2"),
        ({"model": "tiny-llama", "messages": [{"role": "assistant", "content": "hi"}]}, 400,
         "the last message must come from the user"),
        ({"model": "tiny-llama", "messages": []}, 422, "messages"),
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "icl": {"pool": "x"}}, 400,
         "unknown pool 'x'; available: none (this server has no pool library)"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 422, "model: Field required"),
    ],
)
def test_bad_requests_get_openai_style_errors(api, body, status, message):
    _, url = api
    code, answer = post(url, "/chat/completions", body)
    assert code == status
    error = answer["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "path, field, value, status, message",
    [
        ("/chat/completions", "max_tokens", 0, 400, "max_tokens must be between 1 and 8192, got 0"),
        ("/chat/completions", "max_tokens", 9000, 400, "max_tokens must be between 1 and 8192, got 9000"),
        ("/chat/completions", "max_tokens", -3, 422, "max_tokens: Input should be greater than or equal to 0"),
        ("/chat/completions", "max_completion_tokens", 0, 400, "max_completion_tokens must be between 1 and 8192"),
        ("/chat/completions", "max_tokens", 2.5, 422, "max_tokens: Input should be a valid integer"),
        ("/completions", "max_tokens", 0, 400, "max_tokens must be at least 1 (or 0 with echo"),
        ("/completions", "max_tokens", -1, 422, "max_tokens: Input should be greater than or equal to 0"),
        ("/completions", "max_tokens", 2.5, 422, "max_tokens: Input should be a valid integer"),
    ],
)
def test_token_limits_out_of_range_are_refused(api, path, field, value, status, message):
    _, url = api
    body = chat_body() if path == "/chat/completions" else {"model": "tiny-llama", "prompt": "once upon a"}
    code, answer = post(url, path, {**body, field: value})
    assert code == status and message in answer["error"]["message"]
    assert answer["error"]["param"] == field


def test_zero_max_tokens_with_echo_scores_the_prompt_alone(api):
    _, url = api
    body = {"model": "tiny-llama", "prompt": "once upon a", "max_tokens": 0, "echo": True, "logprobs": 0}
    status, answer = post(url, "/completions", body)
    assert status == 200 and answer["usage"]["completion_tokens"] == 0
    assert answer["choices"][0]["text"].endswith("once upon a")
    assert len(answer["choices"][0]["logprobs"]["tokens"]) == answer["usage"]["prompt_tokens"]


def test_icl_pool_names_what_the_server_offers(pools_api, tmp_path):
    service, url = pools_api
    pool = tmp_path / "mine.jsonl"
    pool.write_text("\n".join(json.dumps({"input": f"film {i}", "output": "good"}) for i in range(6)))
    service.library.build_from_upload("mine", pool)  # what the Pools tab's upload does
    for name, demo_input in [("sentiment", ""), ("mine", "film ")]:
        status, answer = post(url, "/chat/completions", chat_body(max_tokens=2, icl={"pool": name, "k": 2}), key=None)
        assert status == 200 and len(answer["icl"]["demos"]) == 2
        assert all(demo["input"].startswith(demo_input) for demo in answer["icl"]["demos"])


def test_icl_pool_refuses_server_paths_without_saying_which_exist(pools_api, tmp_path):
    service, url = pools_api
    secret = tmp_path / "secret.jsonl"
    secret.write_text("\n".join(json.dumps({"input": f"secret {i}", "output": "hidden"}) for i in range(6)))
    service.library.get("sentiment")  # builds and saves the built-in index folder
    folder = service.library.root / "builtin" / "sentiment"
    assert service.open_index(str(secret)) and service.open_index(str(folder)), "sanity check: the CLI opens both"
    available = ", ".join(service.pool_choices())
    for pool in [str(secret), str(folder), "/etc/passwd", str(tmp_path / "missing.jsonl"), "../sentiment", "nowhere"]:
        status, answer = post(url, "/chat/completions", chat_body(icl={"pool": pool, "k": 2}), key=None)
        assert status == 400, pool
        assert answer["error"]["message"] == f"unknown pool '{pool}'; available: {available}"
        assert answer["error"]["param"] == "icl.pool"


def test_ui_is_served_beside_the_api(api):
    _, url = api
    page = urllib.request.urlopen(f"{url}/").read().decode()
    assert "<html" in page.lower()


def test_sixteen_concurrent_streaming_clients_get_their_own_answers(api):
    """Load: 16 streaming clients at once over the base and two adapters; bounded, stops by itself."""
    from concurrent.futures import ThreadPoolExecutor

    service, url = api
    jobs = [(["tiny-llama", *ADAPTERS][i % 3], f"question {i} about the lazy dog") for i in range(16)]
    adapter_of = {"tiny-llama": "base", **{name: name for name in ADAPTERS}}
    serial = [expected(service, adapter_of[model], text, 10) for model, text in jobs]

    def stream(job):
        model, text = job
        chunks = client(url).chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=10, stream=True, timeout=120)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(stream, jobs, timeout=300))
    assert answers == serial
