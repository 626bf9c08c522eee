"""Generate through any OpenAI-compatible server instead of a local model.

    python app.py --backend openai --base-url http://gpu-box:8000/v1 --api-key KEY
    python -m bot ask --backend openai --base-url http://127.0.0.1:7860/v1 "Hello"

`RemoteGenerator` has the local Generator's interface, so the chat service, the UI and the CLI
work unchanged; an adapter name becomes the request's `model` (vLLM serves LoRA adapters under
their own names with `--enable-lora --lora-modules NAME=PATH`). When a tokenizer for the remote
model is at hand (by default the local `--model`), history is fitted to the context window and
the prompt shown is the exact templated text; otherwise messages are sent as they are and shown
as JSON. The server does its own batching, so `complete_many` just runs requests concurrently.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from bot.conversation import FittedPrompt, fit_to_window
from bot.generation import BASE, Completion, StreamState
from bot.settings import GenerationSettings


class RemoteError(ValueError):
    """The remote server refused a request or could not be reached; the message is the server's."""


class RemoteGenerator:
    """`model` is the base model to ask, where the server lists several (Ollama lists every model it
    has); None takes the only one. Its adapters are the models that name it as their parent."""

    def __init__(self, base_url: str, api_key: str | None = None, tokenizer=None, context_window: int = 8192,
                 timeout: float = 600, model: str | None = None):
        self.client = open_client(base_url, api_key, timeout)
        self.api_key = api_key
        self.tokenizer = tokenizer
        self.context_window = context_window
        self.model = model
        self.lock = threading.Lock()
        """Held only while the adapter list is refreshed; generation runs on the server."""
        self.name, self._adapters = self._read_models()

    def _read_models(self) -> tuple[str, list[str]]:
        return read_models(self.client, self.model)

    def resident_adapters(self) -> list[str]:
        with self.lock:
            self.name, self._adapters = self._read_models()
            return list(self._adapters)

    def fit(self, messages: list[dict], settings: GenerationSettings) -> FittedPrompt:
        if self.tokenizer is None:
            return FittedPrompt(messages=list(messages), prompt_tokens=0, dropped_turns=0)
        budget = self.context_window - min(settings.max_new_tokens, self.context_window // 2)
        return fit_to_window(self.tokenizer, messages, budget)

    def render(self, messages: list[dict]) -> str:
        if self.tokenizer is None:
            return json.dumps(messages, ensure_ascii=False, indent=1)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def stream(self, messages: list[dict], settings: GenerationSettings, adapter: str = BASE,
               state: StreamState | None = None, stops: tuple[str, ...] = ()) -> Iterator[str]:
        """`stops`: the server ends the answer before the first of these (OpenAI's `stop`)."""
        state = state or StreamState()
        state.fitted = fitted = self.fit(messages, settings)
        body = self._body(fitted.messages, settings, adapter, stream=True)
        if stops:
            body["stop"] = list(stops)
        started, pieces, usage, finish = time.perf_counter(), [], None, "stop"
        with self.client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise RemoteError(error_message(response))
            for chunk in _sse_payloads(response.iter_lines()):
                if chunk.get("error"):  # a server that fails mid-answer says so in an event (vLLM does)
                    raise RemoteError(f"remote server failed during the answer: {_error_text(chunk)}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    finish = choice.get("finish_reason") or finish
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        pieces.append(piece)
                        yield piece
                if state.cancel.is_set():
                    finish = "cancelled"
                    break
        usage = usage or {}
        text = "".join(pieces)
        state.completion = Completion(
            text=text, prompt_tokens=usage.get("prompt_tokens", fitted.prompt_tokens),
            completion_tokens=usage.get("completion_tokens") or self._count_tokens(text, len(pieces)),
            seconds=time.perf_counter() - started, finish_reason=finish, notice=fitted.notice,
        )

    def _count_tokens(self, text: str, pieces: int) -> int:
        """The answer's tokens, for a server that does not report usage: counted by the local
        tokenizer where there is one, else estimated as the pieces streamed (one token each, mostly)."""
        if self.tokenizer is None or not text:
            return pieces
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def complete(self, messages: list[dict], settings: GenerationSettings, adapter: str = BASE,
                 cancel: threading.Event | None = None, stops: tuple[str, ...] = ()) -> Completion:
        state = StreamState() if cancel is None else StreamState(cancel=cancel)
        for _ in self.stream(messages, settings, adapter, state, stops):
            pass
        return state.completion

    def complete_many(self, conversations, settings: GenerationSettings, adapters: list[str],
                      cancel: threading.Event | None = None, stops: tuple[str, ...] = ()) -> list[Completion]:
        """The requests run concurrently; `cancel` ends each at its next streamed piece. With a seed, a
        request that repeats an earlier one (n answers of one prompt) gets the next seed, as a batch's
        rows draw apart locally; different adapters keep the same seed."""
        seen: dict[str, int] = {}
        jobs = []
        for messages, adapter in zip(conversations, adapters):
            key = json.dumps([messages, adapter], sort_keys=True)
            repeat, seen[key] = seen.get(key, 0), seen.get(key, 0) + 1
            jobs.append((messages, settings.seed_moved_by(repeat), adapter))
        with ThreadPoolExecutor(max_workers=max(len(jobs), 1)) as pool:
            return list(pool.map(lambda job: self.complete(job[0], job[1], job[2], cancel, stops), jobs))

    def _body(self, messages, settings: GenerationSettings, adapter: str, stream: bool) -> dict:
        body = {
            "model": self.name if adapter == BASE else adapter, "messages": messages,
            "max_tokens": settings.max_new_tokens, "temperature": settings.temperature, "stream": stream,
            "stream_options": {"include_usage": True},
        }
        if not settings.greedy:
            body["top_p"] = settings.top_p
        if settings.seed is not None:
            body["seed"] = settings.seed
        if settings.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in settings.logit_bias}
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(settings, name):
                body[name] = getattr(settings, name)
        return body


def open_client(base_url: str, api_key: str | None = None, timeout: float = 600):
    """An httpx client for an OpenAI-compatible base URL (`.../v1`), with the bearer key if given."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)


def request_json(client, method: str, path: str, body: dict | None = None) -> dict:
    """One request's JSON answer; RemoteError with the server's own message on failure."""
    import httpx

    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as error:
        raise RemoteError(f"cannot reach {client.base_url}: {error}") from error
    if response.status_code >= 400:
        raise RemoteError(error_message(response))
    try:
        return response.json()
    except ValueError as error:
        raise RemoteError(f"{client.base_url} answered {path} with something other than JSON: "
                          f"{response.text[:120]!r}") from error


def read_models(client, model: str | None = None) -> tuple[str, list[str]]:
    """The base model to ask (`model`, or the server's only one) and its adapters (the models that
    name it as their parent)."""
    models = request_json(client, "GET", "/models")["data"]
    bases = [m["id"] for m in models if not m.get("parent")]
    if model is None:
        if not bases:
            raise RemoteError(f"the server at {client.base_url} lists no base model")
        if len(bases) > 1:
            raise RemoteError(f"the server at {client.base_url} serves several models ({', '.join(bases)}); "
                              "choose one with --remote-model")
        model = bases[0]
    elif model not in bases:
        listed = ", ".join(m["id"] for m in models) or "none"
        raise RemoteError(f"the server at {client.base_url} has no base model '{model}'; it lists: {listed}")
    return model, [m["id"] for m in models if m.get("parent") == model]


def error_message(response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300]
    return f"remote server answered {response.status_code}: {message}"


def _error_text(payload: dict) -> str:
    error = payload["error"]
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)

def _sse_payloads(lines) -> Iterator[dict]:
    """The JSON payloads of server-sent events, up to `data: [DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)
