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
Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with status 400
(bad values), 401 (missing or wrong key), 404 (unknown model) or 422 (malformed body).
Set `ICL_BOT_API_KEY` to require `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import time
import typing
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from bot.generation import BASE
from bot.service import FewShot


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


API_FEWSHOT_EXCLUDED = ("fixed_ids", "permutation")
"""FewShot fields the API does not take (pool row ids and explicit orders are CLI/UI matters)."""


def _fewshot_fields() -> type[BaseModel]:
    """The `icl` body field: FewShot's fields, types and defaults, with unknown keys refused (422).

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
    max_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = 1
    icl: FewShotFields | None = None
    """This service's extension: few-shot demonstrations for the last user message."""


MAX_PROMPTS = 256
"""Most prompts in one /v1/completions request (they run in sub-batches under the generator's lock)."""


class CompletionRequest(BaseModel):
    model: str
    prompt: str | list[int] | list[list[int]] | list[str]
    max_tokens: int | None = Field(default=16, ge=0)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    echo: bool = False
    logprobs: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1


def create_api(service, api_key: str | None = None) -> FastAPI:
    """A FastAPI app holding the /v1 routes; the Gradio UI is mounted beside them by app.py."""
    api = FastAPI(title="ICL & LoRA chat API")
    api.add_exception_handler(APIError, lambda request, error: error.response())
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.include_router(_routes(service, api_key))
    return api


def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return APIError(422, f"{where}: {first.get('msg', 'invalid request')}", param=where or None).response()


def _routes(service, api_key: str | None) -> APIRouter:
    def authorize(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key", kind="authentication_error", code="invalid_api_key")

    router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @router.get("/models")
    def list_models() -> dict:
        created = int(time.time())
        base = {"id": service.model_name, "object": "model", "created": created, "owned_by": "icl-bot"}
        adapters = [
            {"id": name, "object": "model", "created": created, "owned_by": "icl-bot", "parent": service.model_name}
            for name in service.adapter_choices() if name != BASE
        ]
        return {"object": "list", "data": [base, *adapters]}

    @router.post("/chat/completions")
    def chat_completions(body: ChatRequest):
        adapter, turn = _plan(service, body)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_events(body.model, turn, include_usage), media_type="text/event-stream")
        result = None
        for result in turn:
            pass
        return _completion_body(body.model, result)

    @router.post("/completions")
    def completions(body: CompletionRequest):
        return _text_completions(service, body)

    return router


def _adapter_for(service, model: str) -> str:
    """The adapter a request's `model` names (BASE for the base model's own name); 404 if none."""
    if model not in (BASE, service.model_name) and model not in service.adapter_choices():
        available = ", ".join([service.model_name, *service.adapter_choices()[1:]])
        raise APIError(404, f"unknown model '{model}'; available: {available}", param="model", code="model_not_found")
    return BASE if model == service.model_name else model


def _text_completions(service, body: CompletionRequest) -> dict:
    from bot.completions import complete_tokens
    from bot.settings import GenerationSettings

    if body.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens must be at least 1 (or 0 with echo, to score the prompt alone)",
                       param="max_tokens")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if body.stream:
        raise APIError(400, "streaming is supported on /v1/chat/completions only", param="stream")
    generator = service.generator
    if not hasattr(generator, "loaded"):
        raise APIError(400, "raw completions need a local model; this server generates through a remote backend")
    try:  # outside the generator's lock: attaching an adapter takes it
        adapter = service.use_adapter(_adapter_for(service, body.model))
    except ValueError as error:
        raise APIError(400, str(error), param="model") from error
    tokenizer = generator.tokenizer
    prompts = body.prompt if isinstance(body.prompt, list) and body.prompt and not isinstance(body.prompt[0], int) \
        else [body.prompt]
    if len(prompts) > MAX_PROMPTS:
        raise APIError(400, f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}", param="prompt")
    rows = [list(tokenizer(p)["input_ids"]) if isinstance(p, str) else list(p) for p in prompts]
    vocab = len(tokenizer)
    if any(not 0 <= token < vocab for row in rows for token in row):
        raise APIError(400, f"prompt token ids must be between 0 and {vocab - 1}", param="prompt")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    try:
        settings = GenerationSettings(
            temperature=0.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed,
        )
        done = complete_tokens(generator, rows, max_tokens, settings, adapter, body.logprobs, body.echo)
    except ValueError as error:
        raise APIError(400, str(error)) from error
    done = [_cut_at_stop(tokenizer, item, stops) for item in done]
    choices = [_text_choice(tokenizer, index, item, body.echo) for index, item in enumerate(done)]
    prompt_tokens = sum(len(item.prompt_ids) for item in done)
    completion_tokens = sum(len(item.new_ids) for item in done)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
        "model": body.model, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


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
        pieces = [tokenizer.decode([token]) for token in item.scores.ids]
        offsets, at = [], 0 if echo else len(tokenizer.decode(item.prompt_ids))
        for piece in pieces:
            offsets.append(at)
            at += len(piece)
        logprobs = {
            "tokens": pieces, "token_logprobs": item.scores.logprobs, "text_offset": offsets,
            "top_logprobs": [None if top is None else _top_by_text(tokenizer, top) for top in item.scores.top],
        }
    return {"index": index, "text": prompt_text + text, "logprobs": logprobs, "finish_reason": item.finish_reason}


def _top_by_text(tokenizer, top: dict[int, float]) -> dict[str, float]:
    """Alternatives keyed by their text; where two ids read the same, the likelier one is kept."""
    by_text: dict[str, float] = {}
    for token, logprob in sorted(top.items(), key=lambda pair: -pair[1]):
        by_text.setdefault(tokenizer.decode([token]), logprob)
    return by_text


def _plan(service, body: ChatRequest):
    """Check the request and start the turn; errors surface here, before any byte is sent."""
    from bot.settings import GenerationSettings

    if body.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    adapter = _adapter_for(service, body.model)
    system = "\n\n".join(m.text() for m in body.messages if m.role in ("system", "developer")) or None
    turns = [{"role": m.role, "content": m.text()} for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user":
        raise APIError(400, "the last message must come from the user", param="messages")
    max_tokens = _token_limit(body.max_tokens, "max_tokens")
    max_new_tokens = _token_limit(body.max_completion_tokens, "max_completion_tokens") or max_tokens or 256
    if body.icl:
        _check_pool(service, body.icl.pool)
    try:
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens,
            temperature=0.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed,
        )
        fewshot = FewShot(**body.icl.model_dump()) if body.icl else None
        turn = service.chat(turns[-1]["content"], turns[:-1], system, settings, adapter=adapter, fewshot=fewshot)
        first = next(turn)
    except ValueError as error:
        raise APIError(400, str(error)) from error
    return adapter, _chain(first, turn)


def _token_limit(value: int | None, param: str) -> int | None:
    """A chat request's token limit, which OpenAI requires to be at least 1 (below 0 is a 422); None if not given.
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


def _usage(result) -> dict:
    c = result.completion
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def _finish(result) -> str:
    return "length" if result.completion.finish_reason == "length" else "stop"


def _completion_body(model: str, result) -> dict:
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": _finish(result)}],
        "usage": _usage(result),
    }
    if result.demos:
        body["icl"] = {"demos": result.demos, "notice": result.notice}
    return body


def _events(model: str, turn, include_usage: bool):
    """Server-sent events: a role chunk, content chunks, a finish chunk, [DONE]."""
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict, finish=None, **extra) -> str:
        payload = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    sent, result = 0, None
    for result in turn:
        if len(result.text) > sent:
            yield chunk({"content": result.text[sent:]})
            sent = len(result.text)
    yield chunk({}, _finish(result))
    if include_usage:
        payload = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [], "usage": _usage(result)}
        yield f"data: {json.dumps(payload)}\n\n"
    yield "data: [DONE]\n\n"
