"""An OpenAI-compatible HTTP API over the chat service, served by the same process as the UI.

    GET  /v1/models              the base model and every adapter (each naming its parent)
    POST /v1/chat/completions    `model` picks the base or an adapter per request; `stream: true`
                                 answers with server-sent events as the OpenAI API does
    POST /v1/completions         raw text or token ids, no chat template; `logprobs` and `echo`
                                 score tokens (the prompt's too), as vLLM's endpoint does;
                                 `max_tokens: 0` with `echo` scores the prompt alone

Few-shot settings ride in the namespaced extra field `icl`:
`{"icl": {"pool": "sentiment", "mode": "few", "k": 4, "select": "knn", "order": "nearest-last"}}`.
`icl.pool` is one of the pool names the UI offers; pool files and index folders by path are for the CLI.
When demonstrations were used or earlier turns dropped to fit the context window, the answer
says so under `icl` (`demos`, `notice`); a stream carries it in its first chunk.
Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with status 400
(bad values, a malformed body, or an OpenAI feature this server does not offer: see UNOFFERED),
401 (missing or wrong key), 404 (unknown model or endpoint), 405 or 413 (a body over
`MAX_BODY_BYTES`). Set `ICL_BOT_API_KEY` to require `Authorization: Bearer <key>`. A request
whose client goes away stops its generation; requests queued for the model hold at most
MODEL_WORKERS threads.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import json
import threading
import time
import typing
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from pydantic import BaseModel, ConfigDict, Field, create_model

from bot.generation import BASE
from bot.service import FewShot
from bot.token_text import CONTEXT, shown, token_spans


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


class ContentPart(BaseModel):
    """One part of a message's content list; only text parts can be answered by this text model."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    """None only where OpenAI allows it: an assistant turn (that called tools)."""

    def text(self, index: int) -> str:
        if self.content is None:
            if self.role != "assistant":
                raise APIError(400, f"messages[{index}] ({self.role}) has no content", param=f"messages.{index}.content")
            return ""
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text":
                raise APIError(400, f"messages[{index}] holds a '{part.type}' part; this model reads text parts only",
                               param=f"messages.{index}.content")
            if part.text is None:
                raise APIError(400, f"messages[{index}] has a text part without text", param=f"messages.{index}.content")
        return "".join(part.text for part in self.content)


API_FEWSHOT_EXCLUDED = ("fixed_ids", "permutation")
"""FewShot fields the API does not take (pool row ids and explicit orders are CLI/UI matters)."""


def _fewshot_fields() -> type[BaseModel]:
    """The `icl` body field: FewShot's fields, types and defaults, with unknown keys refused (400).

    Its values are checked by FewShot itself (400), so the rules live in one place.
    """
    hints = typing.get_type_hints(FewShot)
    fields = {
        f.name: (hints[f.name], ... if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(FewShot) if f.name not in API_FEWSHOT_EXCLUDED
    }
    return create_model("FewShotFields", __config__=ConfigDict(extra="forbid"), **fields)


FewShotFields = _fewshot_fields()


class ChatRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    n: int | None = 1
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    icl: FewShotFields | None = None
    """This service's extension: few-shot demonstrations for the last user message."""
    # OpenAI features this server does not offer: refused by name (see UNOFFERED) rather than silently ignored.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    modalities: list[str] | None = None
    audio: Any = None


MAX_STOPS = 4
"""Stop strings per request, as OpenAI allows."""

MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest request body /v1 reads (256 prompts of a few thousand token ids fit); larger is a 413."""


MAX_PROMPTS = 256
"""Most completions one /v1/completions request may ask for, prompts x best_of (they run in sub-batches
under the generator's lock)."""
MAX_CHOICES = 20
"""Most candidates per prompt (`best_of`, and so `n`), OpenAI's limit."""


class CompletionRequest(BaseModel):
    model: str
    prompt: str | list[int] | list[list[int]] | list[str]
    max_tokens: int | None = Field(default=16, ge=0)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    echo: bool | None = False
    logprobs: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    n: int | None = 1
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    best_of: int | None = None
    # OpenAI features this server does not offer: refused by name (see COMPLETION_UNOFFERED).
    suffix: str | None = None


def create_api(service, api_key: str | None = None) -> FastAPI:
    """A FastAPI app holding the /v1 routes; the Gradio UI is mounted beside them by app.py."""
    api = FastAPI(title="ICL & LoRA chat API")
    api.add_exception_handler(APIError, lambda request, error: error.response())
    api.add_exception_handler(ClientLeft, lambda request, error: JSONResponse({}, status_code=499))
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(BodyTooLarge, lambda request, error: _too_large().response())
    api.include_router(_routes(service))
    api.add_middleware(Guard, api_key=api_key)
    return api


def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {}
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'cannot parse it')}").response()
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if where:
        return APIError(400, f"{where}: {first.get('msg', 'invalid request')}", param=where).response()
    # the body itself: missing, or not a JSON object (curl's -d sends a form unless told the Content-Type)
    return APIError(400, "the body must be a JSON object (send it with Content-Type: application/json)").response()


class BodyTooLarge(HTTPException):
    """Raised while a body without Content-Length streams in; an HTTPException, so that FastAPI's body
    reader lets it through (it turns any other error into a 400)."""

    def __init__(self):
        super().__init__(413)


class Guard:
    """Before any /v1 route reads a body: the API key (401, whatever the body), then the body's size
    (413 from its Content-Length, or while it streams in without one)."""

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not get_route_path(scope).startswith("/v1/") or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        refusal = self.refusal(headers)
        if refusal is not None:
            return await refusal.response()(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise BodyTooLarge
            return message

        await self.app(scope, counted, send)

    def refusal(self, headers: dict[str, str]) -> APIError | None:
        if self.api_key:
            scheme, _, given = headers.get("authorization", "").strip().partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
                return APIError(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                                kind="authentication_error", code="invalid_api_key")
        length = headers.get("content-length", "0")
        if not length.isdigit():
            return APIError(400, f"Content-Length must be a number of bytes, got '{length}'")
        return _too_large() if int(length) > MAX_BODY_BYTES else None


def _too_large() -> APIError:
    return APIError(413, f"the request body is over {MAX_BODY_BYTES // 2**20} MiB", code="request_too_large")


ENDPOINTS = {"/v1/models": "GET", "/v1/chat/completions": "POST", "/v1/completions": "POST"}

MODEL_WORKERS = 8
"""Worker threads that requests may hold while they wait for a local model (a chat for its first
token, a completion for all of it). A request past these waits on the event loop, holding no
thread, so that a long queue never takes the threads that `GET /v1/models` and the running
stream's events need. (With a remote backend there is no queue here: the server queues.)"""


def _routes(service) -> APIRouter:
    router = APIRouter(prefix="/v1")
    model_work = anyio.CapacityLimiter(MODEL_WORKERS)

    def model_card(name: str) -> dict:
        card = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "icl-bot"}
        return card if name == service.model_name else {**card, "parent": service.model_name}

    @router.get("/models")
    def list_models() -> dict:
        names = [service.model_name, *(name for name in service.adapter_choices() if name != BASE)]
        return {"object": "list", "data": [model_card(name) for name in names]}

    @router.get("/models/{model:path}")
    def get_model(model: str) -> dict:
        return model_card(service.model_name if _adapter_for(service, model, unusable=404) == BASE else model)

    @router.post("/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        cancel, stops = threading.Event(), _stops(body.stop)
        start = await _unless_client_leaves(request, cancel, None, _plan, service, body, cancel)
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        if (body.n or 1) > 1:
            try:
                results = await _unless_client_leaves(request, cancel, model_work, start)
            except ValueError as error:
                raise APIError(400, str(error)) from error
            answers = [_cut_answer(result, stops) for result in results]
            if body.stream:
                return CancellingStream(_events(body.model, answers, include_usage), cancel)
            return _completion_body(body.model, answers)
        turn = start()
        try:  # the first piece: errors (a prompt too long, say) surface here, before any byte is sent
            first = await _unless_client_leaves(request, cancel, model_work, next, turn)
        except ValueError as error:
            raise APIError(400, str(error)) from error
        answer = _answer(_chain(first, turn), stops, cancel)
        if body.stream:
            return CancellingStream(_events(body.model, [answer], include_usage), cancel)
        return await _unless_client_leaves(request, cancel, None, _completion_body, body.model, [answer])

    @router.post("/completions")
    async def completions(body: CompletionRequest, request: Request):
        cancel = threading.Event()
        answer = await _unless_client_leaves(request, cancel, None, _text_completions, service, body)
        return await _unless_client_leaves(request, cancel, model_work, answer, cancel)

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def elsewhere(path: str, request: Request):
        method = ENDPOINTS.get(f"/v1/{path}")
        if method:
            raise APIError(405, f"/v1/{path} takes {method}, not {request.method}", code="method_not_allowed")
        raise APIError(404, f"no endpoint /v1/{path}; this server has {', '.join(ENDPOINTS)}", code="unknown_url")

    return router


class ClientLeft(Exception):
    """The client disconnected before its request got a worker: nothing ran, and nobody reads an answer."""


async def _unless_client_leaves(request: Request, cancel: threading.Event, limiter, function, *args):
    """`function(*args)` in a worker thread (one of `limiter`'s, or of the default pool for None); if
    the client disconnects meanwhile, `cancel` is set, so the model stops at its next token instead
    of answering nobody while others wait for the lock, and a request still waiting for a worker
    leaves the queue (ClientLeft)."""

    async def watch():
        while not await request.is_disconnected():
            await anyio.sleep(0.25)
        cancel.set()
        group.cancel_scope.cancel()  # a wait for a worker ends here; a running worker is waited for

    outcome: dict = {}
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            outcome["value"] = await anyio.to_thread.run_sync(function, *args, limiter=limiter)
        except Exception as error:  # raised below, outside the group, which would wrap it in an ExceptionGroup
            outcome["error"] = error
        finally:
            group.cancel_scope.cancel()
    if "error" in outcome:
        raise outcome["error"]
    if "value" not in outcome:
        raise ClientLeft
    return outcome["value"]


class CancellingStream(StreamingResponse):
    """Server-sent events that set `cancel` the moment the client disconnects. (Starlette's own
    cancellation waits for the worker thread's current read, which lasts until the next piece of
    text: for text without spaces, the whole answer.)"""

    def __init__(self, events: Iterator[str], cancel: threading.Event):
        super().__init__(_until_client_leaves(events, cancel), media_type="text/event-stream")
        self.cancel = cancel

    async def listen_for_disconnect(self, receive) -> None:
        await super().listen_for_disconnect(receive)
        self.cancel.set()


async def _until_client_leaves(events: Iterator[str], cancel: threading.Event):
    """The stream's events, read in a worker thread. Where the server does not report the
    disconnect (ASGI 2.4), Starlette cancels this at the next event, and the model is stopped then."""
    from starlette.concurrency import iterate_in_threadpool

    finished = False
    try:
        async for event in iterate_in_threadpool(events):
            yield event
        finished = True
    finally:
        if not finished:
            cancel.set()


def _adapter_for(service, model: str, unusable: int = 400) -> str:
    """The adapter a request's `model` names (BASE for the base model's own name); 404 if none, and
    `unusable` (with the reason) for an adapter folder of that name this model cannot take."""
    if model in (BASE, service.model_name):
        return BASE
    choices = service.adapter_choices()
    if model not in choices:
        reason = service.why_not_offered(model)
        if reason:  # a folder of that name is there, but this model cannot take it
            raise APIError(unusable, reason, param="model", code=None if unusable == 400 else "model_not_found")
        available = ", ".join([service.model_name, *choices[1:]])
        raise APIError(404, f"unknown model '{model}'; available: {available}", param="model", code="model_not_found")
    return model


def _text_completions(service, body: CompletionRequest):
    """Check a /v1/completions request; return `answer(cancel)`, which waits for the model and gives
    the response body (`cancel`, set when the client leaves, stops the model at its next token)."""
    from bot.completions import complete_tokens

    _refuse_unoffered(body, COMPLETION_UNOFFERED)
    n = _choices(body.n)
    best_of = n if body.best_of is None else body.best_of  # as vLLM reads it: OpenAI's default 1 would refuse n > 1
    if not n <= best_of <= MAX_CHOICES:
        raise APIError(400, f"best_of must be between n ({n}) and {MAX_CHOICES}, got {best_of}", param="best_of")
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens must be at least 1 (or 0 with echo, to score the prompt alone)",
                       param="max_tokens")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if body.stream:
        raise APIError(400, "streaming is supported on /v1/chat/completions only", param="stream")
    stops = _stops(body.stop)
    generator = service.generator
    if not hasattr(generator, "loaded"):
        raise APIError(400, "raw completions need a local model; this server generates through a remote backend")
    try:  # outside the generator's lock: attaching an adapter takes it
        adapter = service.use_adapter(_adapter_for(service, body.model))
    except ValueError as error:
        raise APIError(400, str(error), param="model") from error
    tokenizer = generator.tokenizer
    settings = _sampling(body, tokenizer)
    prompts = body.prompt if isinstance(body.prompt, list) and body.prompt and not isinstance(body.prompt[0], int) \
        else [body.prompt]
    if len(prompts) * best_of > MAX_PROMPTS:
        field = "prompt" if best_of == 1 else "n" if body.best_of is None else "best_of"
        asked = f"{len(prompts)} prompts" + (f" x {field} {best_of}" if best_of > 1 else "")
        raise APIError(400, f"at most {MAX_PROMPTS} completions per request, got {asked}", param=field)
    rows = [list(tokenizer(p)["input_ids"]) if isinstance(p, str) else list(p) for p in prompts]
    vocab = len(tokenizer)
    if any(not 0 <= token < vocab for row in rows for token in row):
        raise APIError(400, f"prompt token ids must be between 0 and {vocab - 1}", param="prompt")

    ranked = best_of > n  # the candidates are then scored, whether or not the client asked for log-probabilities
    scored = body.logprobs if body.logprobs is not None or not ranked else 0

    def answer(cancel: threading.Event) -> dict:
        try:
            done = complete_tokens(generator, [row for row in rows for _ in range(best_of)], max_tokens, settings,
                                   adapter, scored, bool(body.echo), cancel=cancel)
        except ValueError as error:
            raise APIError(400, str(error)) from error
        done = [_cut_at_stop(tokenizer, item, stops) for item in done]
        completion_tokens = sum(len(item.new_ids) for item in done)  # every candidate's, as OpenAI bills best_of
        if ranked:
            done = [kept for start in range(0, len(done), best_of) for kept in _best(done[start:start + best_of], n)]
        if body.logprobs is None:
            done = [dataclasses.replace(item, scores=None) for item in done]
        choices = [_text_choice(tokenizer, index, item, bool(body.echo)) for index, item in enumerate(done)]
        prompt_tokens = sum(len(row) for row in rows)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": body.model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    return answer


def _best(candidates: list, n: int) -> list:
    """The `n` candidates of highest mean log-probability per answer token (OpenAI's "best"), best first;
    a cancelled run has no scores and keeps its first `n`."""
    def mean_logprob(item) -> float:
        if item.scores is None or not item.new_ids:
            return 0.0
        return sum(item.scores.logprobs[-len(item.new_ids):]) / len(item.new_ids)

    return sorted(candidates, key=mean_logprob, reverse=True)[:n]


def _cut_at_stop(tokenizer, item, stops: list[str]):
    """The completion through the first token whose text reaches a stop string (its scores cut to match).

    The text shown ends before the stop string, as OpenAI's does; see `_text_choice`.
    """
    from dataclasses import replace

    from bot.completions import TokenScores

    def reaches_stop(count: int) -> bool:
        text = tokenizer.decode(item.new_ids[:count], skip_special_tokens=True)
        return any(stop and stop in text for stop in stops)

    if not reaches_stop(len(item.new_ids)):
        return item
    low, keep = 1, len(item.new_ids)  # the fewest tokens that reach a stop: once reached it stays reached
    while low < keep:
        middle = (low + keep) // 2
        if reaches_stop(middle):
            keep = middle
        else:
            low = middle + 1
    scores = item.scores
    if scores is not None:
        drop = len(item.new_ids) - keep
        end = len(scores.ids) - drop
        scores = TokenScores(scores.ids[:end], scores.logprobs[:end], scores.top[:end])
    return replace(item, new_ids=item.new_ids[:keep], finish_reason="stop", scores=scores, stop_strings=tuple(stops))


def _text_choice(tokenizer, index: int, item, echo: bool) -> dict:
    text = tokenizer.decode(item.new_ids, skip_special_tokens=True)
    cuts = [text.index(stop) for stop in item.stop_strings if stop and stop in text]
    if cuts:
        text = text[: min(cuts)]
    prompt_text = tokenizer.decode(item.prompt_ids) if echo else ""
    logprobs = None
    if item.scores is not None:
        # offsets count characters of the prompt's text, whether it is echoed or not (as OpenAI's do)
        scores, context = item.scores, [] if echo else item.prompt_ids
        spans = token_spans(tokenizer, scores.ids, start=0 if echo else len(tokenizer.decode(item.prompt_ids)),
                            context=context)
        logprobs = {
            "tokens": [piece for piece, _ in spans], "token_logprobs": scores.logprobs,
            "text_offset": [offset for _, offset in spans],
            "top_logprobs": [None if top is None else
                             _top_by_text(tokenizer, top, token, logprob,
                                          [*context[-CONTEXT:], *scores.ids[max(0, j - CONTEXT):j]])
                             for j, (token, logprob, top) in enumerate(zip(scores.ids, scores.logprobs, scores.top))],
        }
    return {"index": index, "text": prompt_text + text, "logprobs": logprobs, "finish_reason": item.finish_reason}


def _top_by_text(tokenizer, top: dict[int, float], chosen: int, logprob: float, before: list[int]) -> dict[str, float]:
    """The alternatives and the token chosen (so up to logprobs + 1 entries, as OpenAI gives them),
    keyed as `tokens` shows them after the ids `before`; where two ids read the same, the likelier one is kept."""
    by_text: dict[str, float] = {}
    for token, value in sorted({**top, chosen: logprob}.items(), key=lambda pair: -pair[1]):
        by_text.setdefault(shown(tokenizer, token, before[-CONTEXT:]), value)
    return by_text


UNOFFERED = {
    "tools": "tool calls", "tool_choice": "tool calls", "functions": "function calls",
    "function_call": "function calls", "logprobs": "log-probabilities on chat (POST /v1/completions scores tokens)",
    "top_logprobs": "log-probabilities on chat (POST /v1/completions scores tokens)",
    "modalities": "audio output", "audio": "audio output",
}
"""Request fields of OpenAI features this server does not offer (the field: the feature's name), refused
by name unless left at a value that asks for nothing."""
COMPLETION_UNOFFERED = {"suffix": "suffix (insertion)"}
ASKS_FOR_NOTHING = {"modalities": (["text"],)}
"""Values beyond None, false, zero and empty that ask for nothing."""


def _refuse_unoffered(body: BaseModel, features: dict[str, str]) -> None:
    for field, feature in features.items():
        value = getattr(body, field)
        if value not in (None, False, 0, "", [], {}, *ASKS_FOR_NOTHING.get(field, ())):
            raise APIError(400, f"this server does not offer {feature}; leave out '{field}'", param=field)


SEEDS = 2**63
"""OpenAI's seed is any 64-bit signed whole number (-SEEDS to SEEDS - 1); the generator's is from 0 to SEEDS - 1."""


def _sampling(body, tokenizer=None, **fields):
    """The request's sampling settings (and `fields`), refused with the request's own field names.

    top_p 0 (OpenAI allows it) keeps only the likeliest token: greedy decoding. `logit_bias` token
    ids are checked against `tokenizer`'s vocabulary where there is one (a remote server checks its own)."""
    from bot.settings import GenerationSettings

    top_p = 1.0 if body.top_p is None else body.top_p
    temperature = 0.0 if body.temperature is None else body.temperature
    if body.seed is not None and not -SEEDS <= body.seed < SEEDS:
        raise APIError(400, f"seed must be a 64-bit whole number, got {body.seed}", param="seed")
    bias = []
    for key, value in (body.logit_bias or {}).items():
        digits = key.strip()
        token = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 12 else None
        if token is None or (tokenizer is not None and token >= len(tokenizer)):
            top = "" if tokenizer is None else f" from 0 to {len(tokenizer) - 1}"
            raise APIError(400, f"logit_bias keys must be token ids{top}, got '{key}'", param="logit_bias")
        bias.append((token, value))
    try:
        settings = GenerationSettings(temperature=temperature, top_p=top_p or 1.0, logit_bias=tuple(bias),
                                      presence_penalty=body.presence_penalty or 0.0,
                                      frequency_penalty=body.frequency_penalty or 0.0,
                                      seed=None if body.seed is None else body.seed % SEEDS, **fields)
    except ValueError as error:  # each message begins with the field's name, the request's too
        raise APIError(400, str(error), param=str(error).split(" ", 1)[0]) from error
    return dataclasses.replace(settings, temperature=0.0) if top_p == 0 else settings  # checked, then greedy


def _plan(service, body: ChatRequest, cancel: threading.Event):
    """Check the request and return what answers it, not yet started (it waits for the model): for
    one answer, a function giving its turn (a stream); for n, one giving their n finished results."""
    _refuse_unoffered(body, UNOFFERED)
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise APIError(400, f"response_format '{body.response_format.get('type')}' is not offered; only text",
                       param="response_format")
    n = _choices(body.n)
    adapter = _adapter_for(service, body.model)
    texts = [m.text(index) for index, m in enumerate(body.messages)]
    system = "\n\n".join(t for m, t in zip(body.messages, texts) if m.role in ("system", "developer")) or None
    turns = [{"role": m.role, "content": t} for m, t in zip(body.messages, texts) if m.role in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user":
        raise APIError(400, "the last message must come from the user", param="messages")
    max_tokens = _token_limit(body.max_tokens, "max_tokens")
    max_new_tokens = _token_limit(body.max_completion_tokens, "max_completion_tokens") or max_tokens or 256
    if body.icl:
        _check_pool(service, body.icl.pool)
        if body.icl.select == "fixed" or body.icl.order == "permutation":
            raise APIError(400, "select 'fixed' and order 'permutation' name pool rows and orders by number; "
                           "the API does not take them (the CLI and the UI do)", param="icl")
    settings = _sampling(body, getattr(service.generator, "tokenizer", None), max_new_tokens=max_new_tokens)
    try:
        fewshot = FewShot(**body.icl.model_dump()) if body.icl else None
    except ValueError as error:
        raise APIError(400, f"icl: {error}", param="icl") from error
    try:
        adapter = service.use_adapter(adapter)  # here, where its errors are a 400 (and off the event loop)
    except ValueError as error:
        raise APIError(400, str(error), param="model") from error
    if n > 1:  # n answers of one prompt in one batch, all at once
        return functools.partial(service.compare, turns[-1]["content"], [adapter] * n, system, settings, fewshot,
                                 cancel, history=turns[:-1], stops=tuple(_stops(body.stop)))
    return functools.partial(service.chat, turns[-1]["content"], turns[:-1], system, settings, adapter=adapter,
                             fewshot=fewshot, cancel=cancel)


def _choices(n: int | None) -> int:
    if n is not None and not 1 <= n <= MAX_CHOICES:
        raise APIError(400, f"n must be between 1 and {MAX_CHOICES}, got {n}", param="n")
    return n or 1


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS or any(not s for s in stops):
        raise APIError(400, f"stop takes up to {MAX_STOPS} non-empty strings", param="stop")
    return stops


def _answer(turn, stops: list[str], cancel: threading.Event) -> Iterator[tuple[str, Any, str | None]]:
    """(new text, result, finish reason) as the turn streams; the finish reason comes with the last.

    Text is cut before the first stop string, and text that could be the start of one is held back
    until it is not; on a stop the model is stopped and the turn drained for its token counts."""
    hold = max((len(stop) for stop in stops), default=1) - 1
    sent, stopped, result = 0, False, None
    for result in turn:
        if stopped:
            continue
        text = result.text
        cuts = [text.find(stop, max(0, sent - hold)) for stop in stops]
        cuts = [cut for cut in cuts if cut >= 0]
        if cuts:
            text, stopped = text[: min(cuts)], True
            cancel.set()
        end = len(text) if stopped else max(sent, len(text) - hold)
        if end > sent:
            yield text[sent:end], result, None
            sent = end
    finish = "stop" if stopped else _finish(result)
    yield ("" if stopped else result.text[sent:]), result, finish


def _cut_answer(result, stops: list[str]) -> list[tuple[str, Any, str | None]]:
    """A finished result as `_answer` gives a streamed one: its text cut before the first stop string."""
    cuts = [result.text.find(stop) for stop in stops if stop in result.text]
    if cuts:
        return [(result.text[: min(cuts)], result, "stop")]
    return [(result.text, result, _finish(result))]


def _token_limit(value: int | None, param: str) -> int | None:
    """A chat request's token limit, which OpenAI requires to be at least 1; None if not given.
    Its errors name the request's own field, not the settings field it becomes."""
    from bot.settings import MAX_NEW_TOKENS

    if value is not None and not 1 <= value <= MAX_NEW_TOKENS:
        raise APIError(400, f"{param} must be between 1 and {MAX_NEW_TOKENS}, got {value}", param=param)
    return value


def _check_pool(service, pool: str) -> None:
    """Refuse any pool but the names the UI's pool picker offers: over HTTP a path would open server files.

    Every other value gets the same message, so a caller learns nothing about which files exist.
    """
    choices = service.pool_choices()
    if pool not in choices:
        available = ", ".join(choices) or "none (this server has no pool library)"
        raise APIError(400, f"unknown pool '{pool}'; available: {available}", param="icl.pool")


def _chain(first, rest):
    yield first
    yield from rest


def _usage(results: list) -> dict:
    """One prompt's tokens (its n answers read the same prompt), and every answer's."""
    prompt = results[0].completion.prompt_tokens
    answers = sum(result.completion.completion_tokens for result in results)
    return {"prompt_tokens": prompt, "completion_tokens": answers, "total_tokens": prompt + answers}


def _finish(result) -> str:
    return "length" if result.completion.finish_reason == "length" else "stop"


def _icl(result) -> dict | None:
    """What the answer says about its prompt: the demonstrations used, and any notice (turns dropped)."""
    if not result.demos and not result.notice:
        return None
    return {"demos": result.demos or [], "notice": result.notice}


def _completion_body(model: str, answers: list) -> dict:
    """The response to a chat request: `answers` holds each choice's (text, result, finish reason) pieces."""
    choices, results = [], []
    for index, answer in enumerate(answers):
        text, result, finish = "", None, None
        for piece, result, finish in answer:
            text += piece
        choices.append({"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        results.append(result)
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": choices, "usage": _usage(results),
    }
    if _icl(results[0]):  # the same demonstrations for every choice
        body["icl"] = _icl(results[0])
    return body


def _events(model: str, answers: list, include_usage: bool):
    """Server-sent events: for each choice in turn, a role chunk (the first with `icl` where there is
    one), content chunks and a finish chunk; then the usage if asked, and [DONE]."""
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(index: int, delta: dict, finish=None, **extra) -> str:
        payload = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": index, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    results = []
    for index, answer in enumerate(answers):
        first = True
        for piece, result, finish in answer:
            if first:
                icl = _icl(result) if index == 0 else None
                yield chunk(index, {"role": "assistant", "content": ""}, **({"icl": icl} if icl else {}))
                first = False
            if piece:
                yield chunk(index, {"content": piece})
            if finish:
                yield chunk(index, {}, finish)
        results.append(result)
    if include_usage:
        payload = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [], "usage": _usage(results)}
        yield f"data: {json.dumps(payload)}\n\n"
    yield "data: [DONE]\n\n"
