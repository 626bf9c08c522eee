"""The chat service: one object that the UI, the CLI and the API call for a chat turn.

It joins the generator (model, adapters) with prompt building (system prompt, few-shot
demonstrations). Each call carries all of its settings, so users never share mutable state.
It holds no Gradio code: app.py only wires components to these methods.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from bot.conversation import build_messages
from bot.generation import BASE, Generator
from bot.settings import GenerationSettings


@dataclass
class TurnResult:
    """What one chat turn produced so far; `text` grows while streaming."""

    text: str = ""
    notice: str | None = None
    prompt: str = ""
    """The exact text the model read, chat template applied."""
    demos: list[dict] = field(default_factory=list)
    """Demonstrations in prompt order: {"input", "output", "score"}."""
    done: bool = False


class ChatService:
    def __init__(self, generator: Generator):
        self.generator = generator

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
    ) -> Iterator[TurnResult]:
        """Stream one turn. Raises ValueError (with a message for the user) for bad input."""
        if not message or not message.strip():
            raise ValueError("the message is empty")
        settings = settings or GenerationSettings()
        messages = build_messages(message, history, system)
        yield from self._stream(messages, settings, adapter, TurnResult())

    def _stream(self, messages, settings, adapter, result: TurnResult) -> Iterator[TurnResult]:
        fitted = self.generator.fit(messages, settings)
        result.notice = " ".join(filter(None, [result.notice, fitted.notice])) or None
        result.prompt = self.generator.render(fitted.messages)
        for piece in self.generator.stream(fitted.messages, settings, adapter):
            result.text += piece
            yield result
        result.done = True
        yield result
