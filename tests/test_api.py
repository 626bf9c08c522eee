"""The OpenAI-compatible API, driven by the official `openai` client and by raw HTTP."""

import http.client
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


def test_n_chat_answers_are_the_batched_answers_of_one_prompt(api):
    """Greedy, each of n answers is the one answer; sampled with a seed, they are the generator's own
    batch of n rows (so they differ, and repeat with the seed), with history and a stop string, streamed
    or not. Usage counts the prompt once and every answer's tokens."""
    service, url = api
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]
    messages = [*history, {"role": "user", "content": "the quick brown fox"}]
    one = client(url).chat.completions.create(model="poet", messages=messages, max_tokens=12)
    three = client(url).chat.completions.create(model="poet", messages=messages, max_tokens=12, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert [c.message.content for c in three.choices] == [one.choices[0].message.content] * 3
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens

    sampled = GenerationSettings(max_new_tokens=12, temperature=1.5, seed=11)
    batch = [c.text for c in service.generator.complete_many([build_messages("the quick brown fox", history)] * 3,
                                                             sampled, ["poet"] * 3)]
    assert len(set(batch)) > 1, "sanity check: the sampled rows differ"
    stop = next(text[len(text) // 2] for text in batch if len(text) > 2 and text[len(text) // 2].strip())
    expected = [text[: text.index(stop)] if stop in text else text for text in batch]
    asked = dict(model="poet", messages=messages, max_tokens=12, n=3, temperature=1.5, seed=11, stop=[stop])
    answer = client(url).chat.completions.create(**asked)
    assert [c.message.content for c in answer.choices] == expected
    assert [c.finish_reason for c in answer.choices] == ["stop" if stop in text else "length" for text in batch]
    streamed = {index: "" for index in range(3)}
    for chunk in client(url).chat.completions.create(**asked, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert list(streamed.values()) == expected


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
        ({"model": "tiny-llama", "messages": []}, 400, "messages"),
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "icl": {"pool": "x"}}, 400,
         "unknown pool 'x'; available: none (this server has no pool library)"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model: Field required"),
        # Raised when the turn starts, in a worker thread under a task group: once a 500.
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "   "}]}, 400, "the message is empty"),
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "   "}], "stream": True}, 400,
         "the message is empty"),
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "word " * 5000}]}, 400,
         "the message is too long: the prompt needs"),
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
        ("/chat/completions", "max_tokens", -3, 400, "max_tokens must be between 1 and 8192, got -3"),
        ("/chat/completions", "max_completion_tokens", 0, 400, "max_completion_tokens must be between 1 and 8192"),
        ("/chat/completions", "max_tokens", 2.5, 400, "max_tokens: Input should be a valid integer"),
        ("/completions", "max_tokens", 0, 400, "max_tokens must be at least 1 (or 0 with echo"),
        ("/completions", "max_tokens", -1, 400, "max_tokens: Input should be greater than or equal to 0"),
        ("/completions", "max_tokens", 2.5, 400, "max_tokens: Input should be a valid integer"),
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


def raw(url, path, *, method="POST", body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """Status and JSON body of any request to /v1`path`."""
    request = urllib.request.Request(f"{url}/v1{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_stop_strings_end_the_answer_before_them_streamed_or_not(api):
    service, url = api
    full = expected(service, "base", "a wonderful film", 40)
    stop = full[len(full) // 2 : len(full) // 2 + 3]  # from the middle of the answer it gives without one
    assert stop.strip() and stop in full, f"sanity check: {full!r}"
    cut = full[: full.index(stop)]
    answer = client(url).chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "a wonderful film"}],
                                                 max_tokens=40, stop=[stop, "never appears"])
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == (cut, "stop")
    assert 0 < answer.usage.completion_tokens <= 40  # counted, though the tiny model may finish before it hears
    chunks = list(client(url).chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "a wonderful film"}], max_tokens=40, stop=stop,
        stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("extra, param, message", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "tool calls"),
    ({"response_format": {"type": "json_object"}}, "response_format", "response_format 'json_object' is not offered"),
    ({"logprobs": True, "top_logprobs": 2}, "logprobs", "log-probabilities on chat"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop takes up to 4 non-empty strings"),
])
def test_openai_features_this_server_lacks_are_refused_by_name(api, extra, param, message):
    _, url = api
    status, answer = post(url, "/chat/completions", chat_body(**extra))
    assert status == 400 and message in answer["error"]["message"] and answer["error"]["param"] == param


@pytest.mark.parametrize("content, status, message", [
    ([{"type": "text", "text": 5}], 400, "Input should be a valid string"),
    ([{"type": "text", "text": None}], 400, "messages[0] has a text part without text"),
    ([{"type": "image_url", "image_url": {"url": "data:,"}}], 400, "holds a 'image_url' part; this model reads text"),
    (None, 400, "messages[0] (user) has no content"),
])
def test_content_parts_are_checked(api, content, status, message):
    _, url = api
    code, answer = post(url, "/chat/completions", {"model": "tiny-llama", "messages": [{"role": "user", "content": content}]})
    assert code == status and message in answer["error"]["message"], answer


def test_text_parts_and_an_assistant_turn_without_content_are_read_as_openai_sends_them(api):
    service, url = api
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": None}, {"role": "user", "content": "and now"}]
    status, answer = post(url, "/chat/completions", {"model": "tiny-llama", "messages": messages, "max_tokens": 6})
    reference = service.generator.complete(
        build_messages("and now", [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": ""}]),
        GenerationSettings(max_new_tokens=6))
    assert status == 200 and answer["choices"][0]["message"]["content"] == reference.text


def test_dropped_turns_and_demonstrations_are_reported_streamed_or_not(pools_api):
    from bot.conversation import fit_to_window

    service, url = pools_api
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"question {i} " * 40}, {"role": "assistant", "content": f"answer {i} " * 40}]
    messages = [*history, {"role": "user", "content": "and now"}]
    budget = service.generator.context_window - 4
    dropped = fit_to_window(service.generator.tokenizer, messages, budget).dropped_turns
    assert dropped > 0, "sanity check: the history is longer than the window"
    status, answer = post(url, "/chat/completions", {"model": "tiny-llama", "messages": messages, "max_tokens": 4}, key=None)
    assert status == 200 and f"The {dropped} oldest conversation turns were dropped" in answer["icl"]["notice"]
    assert answer["icl"]["demos"] == []
    body = chat_body(max_tokens=2, icl={"pool": "sentiment", "k": 2})
    status, answer = post(url, "/chat/completions", body, key=None)
    stream = client(url, key="unused").chat.completions.create(
        model="tiny-llama", messages=body["messages"], max_tokens=2, stream=True, extra_body={"icl": body["icl"]})
    chunks = list(stream)
    assert chunks[0].model_extra["icl"] == answer["icl"] and len(answer["icl"]["demos"]) == 2


def test_models_by_id_unknown_endpoints_and_wrong_methods_answer_in_openai_shape(api):
    _, url = api
    auth = {"Authorization": f"Bearer {KEY}"}
    assert client(url).models.retrieve("pirate").model_extra["parent"] == "tiny-llama"
    assert client(url).models.retrieve("tiny-llama").id == "tiny-llama"
    with pytest.raises(openai.NotFoundError, match="unknown model 'gpt-9'"):
        client(url).models.retrieve("gpt-9")
    status, answer = raw(url, "/embeddings", body=b"{}", headers=auth)
    assert status == 404 and "no endpoint /v1/embeddings" in answer["error"]["message"]
    status, answer = raw(url, "/chat/completions", method="GET", headers=auth)
    assert status == 405 and answer["error"]["message"] == "/v1/chat/completions takes POST, not GET"


def test_the_key_is_checked_before_the_body_and_bodies_over_the_limit_are_413(api):
    from bot.api import MAX_BODY_BYTES

    _, url = api
    status, answer = raw(url, "/chat/completions", body=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 401
    for header, status in [(f"bearer {KEY}", 200), (KEY, 401), (f"Bearer {KEY}x", 401)]:
        assert raw(url, "/models", method="GET", headers={"Authorization": header})[0] == status, header
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    status, answer = raw(url, "/chat/completions", body=b"{not json", headers=auth)
    assert status == 400 and answer["error"]["message"].startswith("the body is not valid JSON")
    # Refused from the header, before the body is read (a client sending it would see the connection close).
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", "/v1/chat/completions")
    for name, value in {**auth, "Content-Length": str(MAX_BODY_BYTES + 1)}.items():
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "over 16 MiB" in json.loads(response.read())["error"]["message"]
    connection.close()
    # Without a Content-Length (chunked), counted as it comes in.
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    chunks = (b"x" * 2**20 for _ in range(MAX_BODY_BYTES // 2**20 + 1))
    connection.request("POST", "/v1/chat/completions", body=chunks, headers=auth, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "over 16 MiB" in json.loads(response.read())["error"]["message"]
    connection.close()


@pytest.mark.parametrize("route", ["chat, streamed", "chat", "completions"])
def test_a_client_that_goes_away_stops_its_generation(route):
    """Generation used to run on to max_tokens for nobody, holding the model while others waited
    (on /v1/completions until this was found in review)."""
    import time

    import httpx

    import app

    loaded = tiny_loaded()
    steps = []
    loaded.model.register_forward_pre_hook(lambda *_: steps.append(time.sleep(0.02)))  # 20 ms a token

    def never_ending(module, args, output):  # an answer that would run to max_tokens
        output.logits[..., loaded.tokenizer.eos_token_id] = -float("inf")

    loaded.model.register_forward_hook(never_ending)
    generator = Generator(loaded)
    with serving(app.create_server(ChatService(generator))) as url:
        stream = route == "chat, streamed"
        path, body = ("/completions", {"model": "tiny-llama", "prompt": "once upon a", "max_tokens": 900}) \
            if route == "completions" else ("/chat/completions", chat_body(max_tokens=2000, stream=stream))
        body.update(temperature=1.0, seed=1)
        with httpx.Client(timeout=3) as http:
            if stream:
                with http.stream("POST", f"{url}/v1{path}", json=body) as response:
                    for line in response.iter_lines():
                        if '"content"' in line and '"content": ""' not in line:
                            break  # a first piece has come: hang up
            else:
                with pytest.raises(httpx.ReadTimeout):
                    http.post(f"{url}/v1{path}", json=body)
        assert generator.lock.acquire(timeout=60), "the model is still busy a minute after the client left"
        generator.lock.release()
        ran = len(steps)
        assert ran > 0, "sanity check: the model had started"
        time.sleep(0.5)
        room = min(generator.context_window - 30, 900)  # max_tokens, or what it is cut to: about 18 s
        assert len(steps) == ran < room / 2, f"{ran} tokens made for nobody (there was room for about {room})"


def test_a_long_queue_leaves_threads_for_listing_models_and_running_streams():
    """Each request waiting for the model used to hold a worker thread; 45 of them took all 40 of
    the pool's, and `GET /v1/models` waited behind the model too. Here the model is held at its
    first pass until /models has answered."""
    import threading

    import httpx

    import app

    loaded = tiny_loaded()
    listed, calls = threading.Event(), []

    def hold(module, args):
        calls.append(1)
        listed.wait(120)

    loaded.model.register_forward_pre_hook(hold)
    with serving(app.create_server(ChatService(Generator(loaded)))) as url:
        with httpx.Client(timeout=180, limits=httpx.Limits(max_connections=60)) as http:
            def ask(kind):
                if kind == "chat":
                    return http.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=1)).status_code
                return http.post(f"{url}/v1/completions",
                                 json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 1}).status_code

            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(48) as pool:
                answers = [pool.submit(ask, "chat" if i % 2 else "completions") for i in range(48)]
                for _ in range(600):  # until the model is held at its first pass
                    if calls:
                        break
                    threading.Event().wait(0.05)
                try:
                    threading.Event().wait(1)  # the rest queue up
                    models = http.get(f"{url}/v1/models", timeout=20)
                finally:
                    listed.set()
                statuses = [answer.result() for answer in answers]
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "tiny-llama"
    assert statuses == [200] * 48


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_fields_that_openai_allows_to_be_null_are_read_as_their_defaults(api, path):
    _, url = api
    body = chat_body(max_tokens=6) if path == "/chat/completions" else {"model": "tiny-llama", "prompt": "once upon",
                                                                          "max_tokens": 6}
    status, plain = post(url, path, body)
    nulls = {"n": None, "stream": None, **({"echo": None} if path == "/completions" else {})}
    status_with_nulls, with_nulls = post(url, path, {**body, **nulls})
    assert status == status_with_nulls == 200
    text = (lambda answer: answer["choices"][0].get("message", answer["choices"][0]).get("content")
            or answer["choices"][0].get("text"))
    assert text(with_nulls) == text(plain)


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_a_negative_seed_draws_and_top_p_zero_is_greedy(api, path):
    """OpenAI's seed is any signed 64-bit number and its top_p may be 0 (only the likeliest token)."""
    _, url = api
    body = chat_body(max_tokens=12) if path == "/chat/completions" else {"model": "tiny-llama", "prompt": "once upon",
                                                                           "max_tokens": 12}

    def text(**extra):
        status, answer = post(url, path, {**body, **extra})
        assert status == 200, answer
        choice = answer["choices"][0]
        return choice["message"]["content"] if "message" in choice else choice["text"]

    drawn = [text(temperature=1.5, seed=-1) for _ in range(2)] + [text(temperature=1.5, seed=2**63 - 2)]
    assert drawn[0] == drawn[1] != drawn[2]
    assert text(temperature=1.5, top_p=0, seed=3) == text(temperature=0)


@pytest.mark.parametrize("path, extra, param", [
    ("/chat/completions", {"presence_penalty": 2.5}, "presence_penalty"),
    ("/completions", {"frequency_penalty": -3}, "frequency_penalty"),
    ("/chat/completions", {"modalities": ["text", "audio"]}, "modalities"),
    ("/completions", {"suffix": "the end"}, "suffix"),
    ("/completions", {"n": 3, "best_of": 2}, "best_of"),
    ("/completions", {"best_of": 21}, "best_of"),
    ("/completions", {"n": 0}, "n"),
    ("/completions", {"prompt": ["a"] * 13, "best_of": 20}, "best_of"),  # 260 completions
    ("/completions", {"prompt": ["a"] * 13, "n": 20}, "n"),  # best_of is n: the field asked is n
    ("/completions", {"prompt": ["a"] * 257}, "prompt"),
    ("/chat/completions", {"n": 21}, "n"),
    ("/completions", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("/completions", {"stop": [""]}, "stop"),
    ("/completions", {"temperature": 5}, "temperature"),
    ("/chat/completions", {"logit_bias": {"5": 101}}, "logit_bias"),
    ("/chat/completions", {"logit_bias": {"400000": 1}}, "logit_bias"),
    ("/completions", {"logit_bias": {"the": 1}}, "logit_bias"),
    ("/completions", {"logit_bias": {"²": 1}}, "logit_bias"),  # a digit to str.isdigit, not to int()
    ("/chat/completions", {"top_p": 0, "temperature": 5}, "temperature"),  # checked, though greedy then
    ("/completions", {"seed": 2**64}, "seed"),
    ("/chat/completions", {"logit_bias": {"9" * 5000: 1}}, "logit_bias"),
])
def test_fields_that_would_change_the_answer_unheeded_are_refused_by_name(api, path, extra, param):
    """They used to be read and ignored, so a client asking for a penalty got none (and one asking
    for a bias got an unbiased answer; biases are now applied, and bad ones refused)."""
    _, url = api
    body = chat_body() if path == "/chat/completions" else {"model": "tiny-llama", "prompt": "once upon"}
    status, answer = post(url, path, {**body, **extra})
    assert status == 400 and answer["error"]["param"] == param, answer
    neutral = {"presence_penalty": 0, "frequency_penalty": 0.0, "modalities": ["text"], "suffix": None}
    if param in neutral:  # the value that asks for nothing is taken
        assert post(url, path, {**body, param: neutral[param], "max_tokens": 2})[0] == 200


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_presence_and_frequency_penalties_are_applied_as_openai_defines_them(api, path):
    """They were refused; now the answer is the greedy loop written out with the penalties (and not
    the unpenalised one)."""
    from bot.generation import PEFT_BASE
    from test_generation import penalised_by_hand

    service, url = api
    tokenizer = service.generator.tokenizer
    chat = path == "/chat/completions"
    body = (chat_body(messages=build_messages("hello"), max_tokens=24) if chat
            else {"model": "tiny-llama", "prompt": "hello", "max_tokens": 24})
    prompt = service.generator.render(build_messages("hello")) if chat else "hello"
    ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"]

    def text(**extra):
        status, answer = post(url, path, {**body, **extra})
        assert status == 200, answer
        choice = answer["choices"][0]
        return choice["message"]["content"] if chat else choice["text"]

    by_hand = tokenizer.decode(penalised_by_hand(service.generator.loaded, ids, 24, 0.5, 1.5, adapter_names=[PEFT_BASE]),
                               skip_special_tokens=True)
    assert text() != by_hand, "sanity check: the penalties change this answer"
    assert text(presence_penalty=0.5, frequency_penalty=1.5) == by_hand


def test_n_answers_each_prompt_n_times_in_openais_order(api):
    """Greedy: choice p * n + j is prompt p's one answer. Seeded sampling: a prompt given twice with
    n=16 runs as two sub-batches of the model, and the second copy's answers used to be the first's."""
    _, url = api
    body = {"model": "tiny-llama", "prompt": ["once upon", "the quick brown"], "max_tokens": 6}
    alone = [post(url, "/completions", {**body, "prompt": prompt})[1]["choices"][0]["text"] for prompt in body["prompt"]]
    status, answer = post(url, "/completions", {**body, "n": 2})
    assert status == 200 and [c["index"] for c in answer["choices"]] == [0, 1, 2, 3], answer
    assert [c["text"] for c in answer["choices"]] == [alone[0], alone[0], alone[1], alone[1]] and alone[0] != alone[1]
    sampled = {"model": "tiny-llama", "prompt": ["once upon"] * 2, "max_tokens": 6, "temperature": 1.5, "seed": 5,
               "n": 16}
    texts = [c["text"] for c in post(url, "/completions", sampled)[1]["choices"]]
    assert texts == [c["text"] for c in post(url, "/completions", sampled)[1]["choices"]]  # the seed holds
    assert len(set(texts[:16])) > 1 and texts[16:] != texts[:16]


def test_best_of_returns_the_candidates_of_highest_mean_logprob(api):
    """The same seeded candidates asked for with n = best_of and their log-probabilities, ranked here."""
    _, url = api
    body = {"model": "tiny-llama", "prompt": ["once upon", "the quick brown"], "max_tokens": 6, "temperature": 1.5,
            "seed": 7}
    status, candidates = post(url, "/completions", {**body, "n": 4, "logprobs": 0})
    assert status == 200, candidates
    expected = []
    for start in (0, 4):
        group = candidates["choices"][start:start + 4]
        assert len({c["text"] for c in group}) > 1, "sanity check: the candidates differ, so the ranking matters"
        mean = [sum(c["logprobs"]["token_logprobs"]) / len(c["logprobs"]["token_logprobs"]) for c in group]
        expected += [group[i]["text"] for i in sorted(range(4), key=lambda i: -mean[i])[:2]]
    status, best = post(url, "/completions", {**body, "n": 2, "best_of": 4})
    assert status == 200 and [c["text"] for c in best["choices"]] == expected, best
    assert [c["index"] for c in best["choices"]] == [0, 1, 2, 3] and best["choices"][0]["logprobs"] is None
    assert best["usage"] == candidates["usage"]  # every candidate's tokens count; each prompt's once


@pytest.mark.parametrize("body, headers", [
    (b"", {"Content-Type": "application/json"}),
    (b"[1, 2]", {"Content-Type": "application/json"}),
    (b'{"model": "tiny-llama"}', {"Content-Type": "application/x-www-form-urlencoded"}),  # curl -d's default
])
def test_a_body_that_is_not_a_json_object_is_a_400_that_says_so(api, body, headers):
    _, url = api
    status, answer = raw(url, "/chat/completions", body=body, headers={"Authorization": f"Bearer {KEY}", **headers})
    assert status == 400 and answer["error"]["message"].startswith("the body must be a JSON object"), answer


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_logit_bias_moves_the_tokens_it_names(api, path):
    """Greedy: +100 on one token makes every new token that one; -100 on the unbiased answer's first
    token makes the first token the model's second choice there (read from its own logits)."""
    import torch

    from bot.generation import PEFT_BASE

    service, url = api
    tokenizer = service.generator.tokenizer
    chat = path == "/chat/completions"
    body = chat_body(max_tokens=5) if chat else {"model": "tiny-llama", "prompt": "once upon", "max_tokens": 5}

    def text(**extra):
        status, answer = post(url, path, {**body, **extra})
        assert status == 200, answer
        choice = answer["choices"][0]
        return choice["message"]["content"] if chat else choice["text"]

    forced = tokenizer(" fox", add_special_tokens=False)["input_ids"][0]
    assert text(logit_bias={str(forced): 100}) == tokenizer.decode([forced] * 5)
    prompt = service.generator.render(build_messages("a wonderful film")) if chat else "once upon"
    ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
    with torch.inference_mode():
        logits = service.generator.loaded.model(input_ids=torch.tensor([ids]), adapter_names=[PEFT_BASE]).logits[0, -1]
    first, second = (tokenizer.decode([token]) for token in logits.topk(2).indices.tolist())
    assert text().startswith(first), "sanity check: the reference logits give the unbiased answer"
    assert text(logit_bias={str(logits.argmax().item()): -100}).startswith(second) and first != second


def test_requests_whose_clients_left_while_queued_for_a_worker_never_run():
    """The model is held; twelve clients ask and hang up. The first MODEL_WORKERS got a worker
    (they then stop at once, unanswered); the rest used to wait for one and run all the same."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    import app
    import bot.completions
    from bot.api import MODEL_WORKERS

    loaded = tiny_loaded()
    release, held = threading.Event(), threading.Event()

    def hold(module, args):
        held.set()
        release.wait(120)

    loaded.model.register_forward_pre_hook(hold)
    generator = Generator(loaded)
    calls, complete = [], bot.completions.complete_tokens

    def counted(*args, **kwargs):
        calls.append(1)
        return complete(*args, **kwargs)

    bot.completions.complete_tokens = counted
    try:
        with serving(app.create_server(ChatService(generator))) as url:
            def ask(_):
                try:
                    httpx.post(f"{url}/v1/completions", json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 4},
                               timeout=3)
                except httpx.TimeoutException:
                    return "left"

            with ThreadPoolExecutor(MODEL_WORKERS + 4) as pool:
                assert list(pool.map(ask, range(MODEL_WORKERS + 4))) == ["left"] * (MODEL_WORKERS + 4)
            time.sleep(1)  # the server notices the hang-ups (it looks every 0.25 s)
            release.set()
            assert generator.lock.acquire(timeout=60)
            generator.lock.release()
            time.sleep(0.5)
    finally:
        release.set()
        bot.completions.complete_tokens = complete
    assert held.is_set() and len(calls) == MODEL_WORKERS
