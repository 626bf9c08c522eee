"""The chat service: one object that the UI, the CLI and the API call for a chat turn.

It joins the generator (model, adapters) with prompt building (system prompt, few-shot
demonstrations). Each call carries all of its settings, so users never share mutable state.
It holds no Gradio code: app.py only wires components to these methods.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from bot.conversation import build_messages
from bot.generation import BASE, Completion, Generator, StreamState
from bot.settings import GenerationSettings

MODES = ("zero", "one", "few")


@dataclass(frozen=True)
class FewShot:
    """How to build an in-context prompt for one turn."""

    pool: str
    """The demonstration pool: a name in the library, or (CLI) a pool file or an index folder."""
    mode: str = "few"
    """`zero` (task description only), `one` (one demonstration) or `few` (k demonstrations)."""
    k: int = 4
    """Demonstrations in few mode."""
    select: str = "knn"
    """knn, random, mmr or fixed (see retrieval.select)."""
    order: str = "nearest-last"
    """nearest-last, nearest-first, random or permutation (see retrieval.order)."""
    seed: int = 0
    """Seed for random selection and random order."""
    diversity: float = 0.5
    """MMR's weight on dissimilarity to the demonstrations already chosen."""
    style: str = "chat"
    """chat (a user/assistant pair per demonstration) or text (one block)."""
    fixed_ids: tuple[int, ...] | None = None
    """Pool rows for selection `fixed`."""
    permutation: tuple[int, ...] | None = None
    """Positions for order `permutation`."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode '{self.mode}'; choose one of: {', '.join(MODES)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f"k must be a whole number >= 0, got {self.k!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"the demonstrations' seed must be a whole number >= 0, got {self.seed!r}")
        from retrieval.select import check_diversity

        check_diversity(self.diversity)

    @property
    def shots(self) -> int:
        return {"zero": 0, "one": 1}.get(self.mode, self.k)


def check_pool(pool: str, names) -> None:
    """Refuse a `pool` that is neither one of the library's `names`, an index folder nor a pool file
    (the command line checks this before the model loads)."""
    from pathlib import Path

    from retrieval.storage import META_FILE

    path = Path(pool)
    if pool in names or (path / META_FILE).is_file() or path.is_file():
        return
    if path.is_dir():
        raise ValueError(f"'{pool}' is a folder but not an index (no {META_FILE}); build one with "
                         "python -m retrieval build, or give a pool file")
    if path.suffix or "/" in pool:  # written as a file, not a name
        raise ValueError(f"pool file '{pool}' does not exist")
    raise ValueError(f"unknown pool '{pool}'; available: {', '.join(names)}, or a pool file")


@dataclass
class TurnResult:
    """What one chat turn produced so far; `text` grows while streaming."""

    text: str = ""
    notice: str | None = None
    prompt: str = ""
    """The exact text the model read, chat template applied."""
    demos: list[dict] = field(default_factory=list)
    """Demonstrations in prompt order: {"id", "input", "output", "score"}."""
    completion: Completion | None = None
    """Token counts and timing, once the answer is complete."""

    @property
    def done(self) -> bool:
        return self.completion is not None


class ChatService:
    def __init__(self, generator: Generator, library=None, adapters=None):
        self.generator = generator
        self.library = library
        """A retrieval.library.PoolLibrary; None serves plain chat only."""
        self.adapters = adapters
        """An adapters.host.AdapterHost; None serves the base model only."""

    def adapter_choices(self) -> list[str]:
        """`base`, then every adapter that is resident or can be loaded from the adapters folder onto
        this base model (one trained on another base is left out: see `why_not_offered`)."""
        names = set(self.generator.resident_adapters())
        if self.adapters is not None:
            names = (names - self.adapters.prune_deleted()) | set(self.adapters.offered())
        return [BASE, *sorted(names)]

    def why_not_offered(self, name: str) -> str | None:
        """Why an adapter in the adapters folder is not among `adapter_choices` (another base model, a
        problem with its files); None if it is offered or there is no such folder."""
        return None if self.adapters is None else self.adapters.why_not_offered(name)

    def use_adapter(self, name: str) -> str:
        """Make the adapter resident (loading it on first use, or anew once its folder was replaced)
        and return the name to generate with."""
        if name == BASE:
            return name
        if self.adapters is not None and name in self.adapters.attached:
            return self.adapters.current(name)  # reloaded if it was trained again since
        if name in self.generator.resident_adapters():
            return name
        if self.adapters is None:
            raise ValueError(f"unknown adapter '{name}'; available: {BASE}")
        return self.adapters.attach(name)

    def pool_choices(self) -> list[str]:
        return list(self.library.names()) if self.library is not None else []

    @property
    def model_name(self) -> str:
        return self.generator.name

    def chat(
        self,
        message: str,
        history: list[dict] | None = None,
        system: str | None = None,
        settings: GenerationSettings | None = None,
        adapter: str = BASE,
        fewshot: FewShot | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[TurnResult]:
        """Stream one turn. Raises ValueError (with a message for the user) for bad input. Setting
        `cancel` (from any thread) stops the model at its next token; the turn then ends as usual."""
        if not message or not message.strip():
            raise ValueError("the message is empty")
        settings = settings or GenerationSettings()
        adapter = self.use_adapter(adapter)
        messages, result = self.prepare(message, history, system, settings, fewshot)
        yield from self._stream(messages, settings, adapter, result, cancel)

    def prepare(self, message, history, system, settings, fewshot: FewShot | None) -> tuple[list[dict], TurnResult]:
        """The messages to send for one turn, and a result that already holds the demonstrations."""
        if fewshot is None:
            return build_messages(message, history, system), TurnResult()
        messages, result = self.fewshot_messages(message, system, settings, fewshot)
        if history:
            result.notice = (f"With a demonstration pool chosen, each message is answered on its own ({fewshot.mode}-shot "
                             "prompt): earlier turns are not sent. Choose no pool to chat with history.")
        return messages, result

    def compare(
        self,
        message: str,
        adapters: list[str],
        system: str | None = None,
        settings: GenerationSettings | None = None,
        fewshot: FewShot | None = None,
        cancel: threading.Event | None = None,
        history: list[dict] | None = None,
        stops: tuple[str, ...] = (),
    ) -> list[TurnResult]:
        """One prompt answered by several adapters (or the base; a name may repeat, for several answers)
        in one batched call, same demonstrations. `cancel` ends the answers at their next token (Compare's Stop)."""
        if not message or not message.strip():
            raise ValueError("the message is empty")
        if not adapters:
            raise ValueError("choose at least one model to compare")
        settings = settings or GenerationSettings()
        names = [self.use_adapter(name) for name in adapters]
        messages, template = self.prepare(message, history, system, settings, fewshot)
        completions = self.generator.complete_many([messages] * len(names), settings, names, cancel=cancel,
                                                   stops=stops)
        prompt = self.generator.render(self.generator.fit(messages, settings).messages)
        return [
            TurnResult(text=c.text, notice=template.notice or c.notice, prompt=prompt, demos=template.demos, completion=c)
            for c in completions
        ]

    def fewshot_messages(self, message: str, system, settings, fewshot: FewShot) -> tuple[list[dict], TurnResult]:
        """Select, order and lay out demonstrations for `message`, fitted to the context window."""
        from bot.fewshot import build_fewshot_prompt
        from retrieval.order import order_demos
        from retrieval.select import select_demos

        index = self.open_index(fewshot.pool)
        demos = select_demos(
            index, message, fewshot.shots, fewshot.select, seed=fewshot.seed, diversity=fewshot.diversity,
            fixed_ids=list(fewshot.fixed_ids) if fewshot.fixed_ids is not None else None,
        )
        demos = order_demos(
            demos, fewshot.order, seed=fewshot.seed,
            permutation=list(fewshot.permutation) if fewshot.permutation is not None else None,
        )
        window = self.generator.context_window
        prompt = build_fewshot_prompt(
            self.generator.tokenizer, message, demos, task=index.pool.task, style=fewshot.style,
            budget=window - min(settings.max_new_tokens, window // 2), system=system,
        )
        return prompt.messages, TurnResult(notice=prompt.notice, demos=prompt.demo_dicts())

    def open_index(self, pool: str):
        """A library index by name, or (for the CLI) an index folder or a pool file by path."""
        from pathlib import Path

        from retrieval.index import DemoIndex
        from retrieval.pool import MissingColumnError, load_pool
        from retrieval.storage import META_FILE

        if self.library is None:
            raise ValueError("few-shot prompts need a pool library; this service has none")
        names = self.library.names()
        if pool in names:
            return self.library.get(pool)
        check_pool(pool, names)
        path = Path(pool)
        if (path / META_FILE).is_file():
            return DemoIndex.load(path, self.library.embedder)
        try:
            examples = load_pool(path)
        except MissingColumnError as error:  # a pool file is read with the columns `input` and `output`
            raise MissingColumnError(
                f"{error}; for other columns, build an index with python -m retrieval build --pool FILE "
                f"--{error.field}-field COLUMN --out DIR, and pass the folder", error.field) from None
        return DemoIndex.build(examples, self.library.embedder)

    def _stream(self, messages, settings, adapter, result: TurnResult, cancel=None) -> Iterator[TurnResult]:
        fitted = self.generator.fit(messages, settings)
        result.notice = " ".join(filter(None, [result.notice, fitted.notice])) or None
        result.prompt = self.generator.render(fitted.messages)
        state = StreamState() if cancel is None else StreamState(cancel=cancel)
        for piece in self.generator.stream(fitted.messages, settings, adapter, state):
            result.text += piece
            yield result
        result.completion = state.completion
        yield result
