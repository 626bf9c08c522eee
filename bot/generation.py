"""Generate answers from chat messages: streaming, stoppable, one adapter per request.

The generator owns the model's compute. Requests are served one at a time behind a lock: a
request names its adapter (or the base) as an argument, so no request can change what another
one runs. It knows nothing about retrieval or the UI.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from bot.conversation import FittedPrompt, fit_to_window
from bot.models import LoadedModel
from bot.settings import GenerationSettings

BASE = "base"
"""The adapter name that means: no adapter, the base model's own weights."""
PEFT_BASE = "__base__"
"""peft's name for the base model in mixed-adapter batches."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: str
    """`stop` (end of turn), `length` (max_new_tokens reached) or `cancelled`."""
    notice: str | None = None


@dataclass
class StreamState:
    """Filled in while a stream runs; complete once the iterator is exhausted."""

    fitted: FittedPrompt | None = None
    completion: Completion | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


class StopOnEvent:
    """A stopping criterion that ends generation as soon as the event is set (the UI's stop button)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class StopOnStrings:
    """A stopping criterion that ends each batch row once its answer's text holds one of `stops`
    (the API's `stop`); `lengths[row]` is then that row's answer tokens, through the one that
    completed the stop string. Use one per `generate` call: the answers start at `prompt_width`."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stops, self.prompt_width = tokenizer, tuple(stops), prompt_width
        self.lengths: dict[int, int] = {}
        self.tail = 4 * max(map(len, self.stops)) + 2
        """Tokens read each step: a stop string first appears in the newest tokens, and its characters
        take at most 4 byte tokens each (each step decodes these, not the whole answer)."""

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        answers = input_ids[:, self.prompt_width:].tolist()
        for row, ids in enumerate(answers):
            if row not in self.lengths:
                text = self.tokenizer.decode(ids[-self.tail:], skip_special_tokens=True)
                if any(stop in text for stop in self.stops):
                    self.lengths[row] = len(ids)
        return torch.tensor([row in self.lengths for row in range(len(answers))], device=input_ids.device)


def stopping_on(cancel: threading.Event | None) -> dict:
    """`generate` keyword arguments that end it at the next token once `cancel` is set (none for None)."""
    from transformers import StoppingCriteriaList

    return {} if cancel is None else {"stopping_criteria": StoppingCriteriaList([StopOnEvent(cancel)])}


class OccurrencePenalty:
    """A logits processor for OpenAI's presence and frequency penalties: each token's logit loses
    `presence` if the answer has used it and `frequency` for each time it has. The prompt does not
    count: the first call's width is taken as the prompt's, so use one instance per `generate` call."""

    def __init__(self, presence: float, frequency: float):
        self.presence, self.frequency = presence, frequency
        self.prompt_width: int | None = None

    def __call__(self, input_ids, scores):
        import torch

        if self.prompt_width is None:
            self.prompt_width = input_ids.shape[1]
        answer = input_ids[:, self.prompt_width:]
        if answer.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


DECODING_EXTRAS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
                   "min_new_tokens": None, "bad_words_ids": None, "suppress_tokens": None,
                   "begin_suppress_tokens": None, "sequence_bias": None, "forced_bos_token_id": None,
                   "forced_eos_token_id": None, "stop_strings": None}
"""Generation-config fields that change greedy `generate`, with their neutral values."""


def _decoding_extras(config) -> list[str]:
    """The fields of a generation config that make `generate` more than plain greedy decoding."""
    found = [name for name, neutral in DECODING_EXTRAS.items() if getattr(config, name, neutral) not in (neutral, None, 0)]
    if (getattr(config, "min_length", 0) or 0) > 0:
        found.append("min_length")
    return found


def _call(inputs: dict, settings: GenerationSettings, adapters, function, **kwargs):
    return function(inputs, settings, adapters, **kwargs)


DECODERS = ("auto", "native", "compiled", "eager")


def _fast_decoder(loaded: LoadedModel, decoder: str):
    """(decoder or None, a line saying which one serves, or why none does)."""
    from bot import zerogpu
    from bot.fastdecode import FastDecoder
    from bot.native import NativeDecoder, NativeUnavailable

    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder '{decoder}'; choose one of: {', '.join(DECODERS)}")
    problem = ""
    if zerogpu.active():
        problem = "on ZeroGPU the model runs under GPU leases, which fast decoding would bypass"
    elif loaded.device != "cpu":
        problem = f"fast decoding is for models on the CPU; this one is on {loaded.device}"
    elif extra := _decoding_extras(loaded.model.generation_config):
        problem = f"fast decoding is plain greedy decoding, but the model's generation config sets {', '.join(extra)}"
    elif decoder in ("auto", "native"):
        try:
            return NativeDecoder(loaded.model, max_len=loaded.context_window), "fast decoding: native (bot.native)"
        except NativeUnavailable as error:
            problem = str(error)
    if problem and decoder != "auto":
        raise ValueError(problem)
    if problem:
        return None, f"fast decoding off: {problem}"
    return (FastDecoder(loaded.model, max_len=loaded.context_window, compile=decoder == "compiled"),
            f"fast decoding: {decoder} loop (bot.fastdecode)")


class Generator:
    def __init__(self, loaded: LoadedModel, fast_decode: bool = False, decoder: str = "auto"):
        """`fast_decode`: answer greedy base-model requests on the CPU, batch 1, with the same tokens as
        `generate` in fp32 but without its per-token overhead. `decoder` picks how:
        - `native`: `bot.native`, one C call per token, for the base and plain LoRA adapters (fp32
          Llama-style models; 8.8x `generate` on the default model in BENCHMARKS.md);
        - `compiled`: `bot.fastdecode`, a static cache and a compiled step (any model; each cache size
          compiles on first use; 1.2x);
        - `eager`: the same loop uncompiled (tests);
        - `auto`: native where it can run this model, else plain `generate`; `fast_note` says which.
        An explicit decoder that cannot serve this model raises ValueError with the reason."""
        from bot.zerogpu import on_gpu

        self.loaded = loaded
        self.lock = threading.Lock()
        self.fast = None
        self.fast_note = ""
        if fast_decode:
            self.fast, self.fast_note = _fast_decoder(loaded, decoder)
        self._generate = on_gpu(self._generate)
        self.leased = on_gpu(_call)
        """`leased(inputs, settings, adapters, function=f, ...)` runs f(inputs, settings, adapters, ...) under
        a GPU lease sized like a generation of `settings.max_new_tokens` (other model calls, e.g. scoring)."""

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def context_window(self) -> int:
        return self.loaded.context_window

    def fit(self, messages: list[dict], settings: GenerationSettings) -> FittedPrompt:
        """Trim history so the prompt leaves room for the answer (at most half the window is reserved)."""
        window = self.loaded.context_window
        budget = window - min(settings.max_new_tokens, window // 2)
        return fit_to_window(self.loaded.tokenizer, messages, budget)

    def resident_adapters(self) -> list[str]:
        """Adapters loaded on the model, each usable by name in any request."""
        return list(getattr(self.loaded.model, "peft_config", {}))

    def render(self, messages: list[dict]) -> str:
        """The exact prompt text the model reads for these messages."""
        return self.loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def stream(
        self, messages: list[dict], settings: GenerationSettings, adapter: str = BASE, state: StreamState | None = None
    ) -> Iterator[str]:
        """Yield the answer's text piece by piece. Closing the iterator (or `state.cancel`) stops generation."""
        from transformers import TextIteratorStreamer

        state = state or StreamState()
        state.fitted = fitted = self.fit(messages, settings)
        tokenizer = self.loaded.tokenizer
        inputs = self._encode(fitted.messages)
        room = self.loaded.context_window - fitted.prompt_tokens
        if settings.max_new_tokens > room:
            settings = replace(settings, max_new_tokens=room)
        # No timeout: a request may wait its turn behind others for long; the worker always ends the stream.
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def work():
            try:
                with self.lock:
                    if self._decodes_fast(settings, adapter):
                        result["output"] = self._decode_fast(inputs["input_ids"], settings, adapter, streamer,
                                                             state.cancel)
                    else:
                        result["output"] = self._generate(inputs, settings, adapter, streamer=streamer,
                                                          **stopping_on(state.cancel))
            except BaseException as error:  # surfaced in the caller's thread below
                result["error"] = error
                streamer.end()

        started = time.perf_counter()
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        pieces = []
        drained = False
        try:
            for piece in streamer:
                pieces.append(piece)
                yield piece
            drained = True
        finally:
            if not drained:
                state.cancel.set()  # the consumer went away: stop the model too
            thread.join()
        if "error" in result:
            raise result["error"]
        new_tokens = result["output"].shape[1] - inputs["input_ids"].shape[1]
        state.completion = Completion(
            text="".join(pieces), prompt_tokens=fitted.prompt_tokens, completion_tokens=new_tokens,
            seconds=time.perf_counter() - started,
            finish_reason=self._finish_reason(result["output"][0, -1].item(), new_tokens, settings, state.cancel),
            notice=fitted.notice,
        )

    def complete(self, messages: list[dict], settings: GenerationSettings, adapter: str = BASE) -> Completion:
        state = StreamState()
        for _ in self.stream(messages, settings, adapter, state):
            pass
        return state.completion

    def complete_many(
        self, conversations: list[list[dict]], settings: GenerationSettings, adapters: list[str],
        cancel: threading.Event | None = None, stops: tuple[str, ...] = (),
    ) -> list[Completion]:
        """Answer several conversations in one batched call, each with its own adapter.

        peft's mixed-batch inference applies each row's adapter to that row alone. Greedy fp32
        answers equal one-by-one answers; in bf16 padding changes the rounding, so they can differ.
        `cancel` (from any thread) ends every row at its next token; the answers so far are returned.
        A row whose text reaches one of `stops` ends there ("stop"; its text still holds the stop string).
        """
        from transformers import StoppingCriteriaList

        if len(conversations) != len(adapters):
            raise ValueError(f"{len(conversations)} conversations but {len(adapters)} adapters")
        fitted = [self.fit(messages, settings) for messages in conversations]
        rows = [self.loaded.tokenizer.apply_chat_template(f.messages, add_generation_prompt=True, tokenize=True)
                for f in fitted]
        rows = [list(row["input_ids"] if hasattr(row, "keys") else row) for row in rows]
        room = self.loaded.context_window - max(len(row) for row in rows)
        if settings.max_new_tokens > room:
            settings = replace(settings, max_new_tokens=room)
        inputs = self._left_pad(rows)
        width = inputs["input_ids"].shape[1]
        criteria = list(stopping_on(cancel).get("stopping_criteria", []))
        strings = StopOnStrings(self.loaded.tokenizer, stops, width) if stops else None
        criteria += [strings] if strings else []
        started = time.perf_counter()
        with self.lock:
            output = self._generate(inputs, settings, adapters,
                                    **({"stopping_criteria": StoppingCriteriaList(criteria)} if criteria else {}))
        seconds = time.perf_counter() - started
        cancelled = cancel is not None and cancel.is_set()
        # Empty where `generate` ran in another process (a ZeroGPU lease): the rows stopped all the
        # same, padded after their stop, and the API still cuts each text at its stop string.
        ends = strings.lengths if strings else {}
        return [self._completion(output[i, width:width + ends[i]] if i in ends else output[i, width:], f, settings,
                                 seconds, cancelled, stopped=i in ends) for i, f in enumerate(fitted)]

    def _left_pad(self, rows: list[list[int]]) -> dict:
        import torch

        width = max(len(row) for row in rows)
        pad = self.loaded.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        return {"input_ids": ids.to(self.loaded.device), "attention_mask": mask.to(self.loaded.device)}

    def _completion(self, new_ids, fitted: FittedPrompt, settings: GenerationSettings, seconds: float,
                    cancelled: bool = False, stopped: bool = False) -> Completion:
        """A batch row's answer: its tokens up to the first end-of-turn (rows that ended early are padded);
        `stopped`: `new_ids` end at a stop string."""
        eos_ids = self._eos_ids()
        tokens = new_ids.tolist()
        ended = next((i for i, token in enumerate(tokens) if token in eos_ids), None)
        kept = tokens if ended is None else tokens[:ended]
        return Completion(
            text=self.loaded.tokenizer.decode(kept, skip_special_tokens=True), prompt_tokens=fitted.prompt_tokens,
            completion_tokens=len(kept) + (ended is not None), seconds=seconds,
            finish_reason=self._row_finish(ended is not None or stopped, len(kept), settings, cancelled),
            notice=fitted.notice,
        )

    @staticmethod
    def _row_finish(ended: bool, tokens: int, settings: GenerationSettings, cancelled: bool) -> str:
        """A batch row's finish reason; a row that reached max_new_tokens is `length` even where a
        cancel came just after the run."""
        if ended:
            return "stop"
        return "cancelled" if cancelled and tokens < settings.max_new_tokens else "length"

    def _encode(self, messages: list[dict]) -> dict:
        encoded = self.loaded.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return {key: value.to(self.loaded.device) for key, value in encoded.items()}

    def _generate(self, inputs: dict, settings: GenerationSettings, adapters: str | list[str], **kwargs):
        """Run `generate`; call with the lock held. `adapters` is one name, or one per batch row."""
        import torch

        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        names = [adapters] if isinstance(adapters, str) else adapters
        resident = self.resident_adapters()
        unknown = [name for name in names if name != BASE and name not in resident]
        if unknown:
            raise ValueError(f"unknown adapter '{unknown[0]}'; available: {', '.join([BASE, *resident])}")
        extra = {}
        if resident:
            extra["adapter_names"] = [PEFT_BASE if name == BASE else name for name in names]
        with torch.inference_mode():
            return self.loaded.model.generate(
                **inputs, **settings.generate_kwargs(), **extra, **kwargs,
                pad_token_id=self.loaded.tokenizer.pad_token_id,
            )

    def _decodes_fast(self, settings: GenerationSettings, adapter: str) -> bool:
        """The fast decoder serves greedy requests without a logit bias or penalty: the native one for the base and any
        plain LoRA adapter, the compiled loop for the plain base model only (no adapters loaded on it)."""
        from bot.native import NativeDecoder

        if self.fast is None or not settings.greedy or settings.shapes_logits:
            return False
        if isinstance(self.fast, NativeDecoder):
            return not self.fast.adapter_problem(self.loaded.model, None if adapter == BASE else adapter)
        return adapter == BASE and not self.resident_adapters() and self.fast.model is self.loaded.model

    def _decode_fast(self, input_ids, settings: GenerationSettings, adapter: str, streamer, cancel: threading.Event):
        """Greedy decoding with the fast decoder, streamed like `generate`; call with the lock held."""
        import torch

        produced: list[int] = []
        streamer.put(input_ids[0])  # the prompt: the streamer skips it, as with generate
        tokens = self.fast.tokens(input_ids, settings.max_new_tokens, self._eos_ids(),
                                  adapter=None if adapter == BASE else adapter, model=self.loaded.model)
        for token in tokens:
            produced.append(token)
            streamer.put(torch.tensor([token]))
            if cancel.is_set():
                break
        streamer.end()  # on an error, the caller's worker ends the stream
        return torch.cat([input_ids, torch.tensor([produced], dtype=input_ids.dtype)], dim=1)

    def _eos_ids(self) -> set[int]:
        eos = self.loaded.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    def _finish_reason(self, last_token: int, new_tokens: int, settings: GenerationSettings, cancel) -> str:
        if cancel.is_set():
            return "cancelled"
        if last_token in self._eos_ids() or new_tokens < settings.max_new_tokens:
            return "stop"
        return "length"
