"""Predictions for lab cases: label scoring for classification, generation for the rest.

A `Case` is the demonstrations, the query and its gold answer. `Predictor.label_logprobs` gives
each case's log-probabilities over the label set (contextually calibrated when asked, with the
content-free inputs run after the same demonstrations); `predict` turns them, or generated
answers, into predicted labels. This module decides nothing about which demonstrations to show.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lab.calibrate import CONTENT_FREE, calibrate, normalise_rows
from lab.errors import LabError
from lab.generate import generate_lines
from lab.prompt import Demo, Prompt, PromptFormat, encode_ids
from lab.scorer import CachedScorer

Scorer = Callable[[Sequence[Prompt], Sequence[str]], np.ndarray]
"""(prompts, continuations) -> (n, L) summed log-probabilities; `CachedScorer.score` or `naive_score`."""
LineGenerator = Callable[[Sequence[str], int, float, int], list[str]]
"""(texts, max_new_tokens, temperature, seed) -> the first line written after each text."""


@dataclass(frozen=True)
class Case:
    demos: tuple[Demo, ...]
    query: str
    gold: str


class Predictor:
    """Runs cases on one model with one prompt format and label set."""

    def __init__(self, model, tokenizer, fmt: PromptFormat, labels: list[str], task: str = "classify",
                 calibrated: bool = False, batch_size: int = 32, max_new_tokens: int = 16,
                 scorer: Scorer | None = None, generator: LineGenerator | None = None, window: int | None = None):
        """`model` may be None when `scorer` and `generator` run elsewhere (`lab.remote`). `window`
        is the model's context in tokens (`LoadedModel.context_window`); longer prompts are refused."""
        self.model = model
        self.window = window
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.labels = labels
        self.task = task
        self.calibrated = calibrated
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.scorer = scorer or CachedScorer(model, tokenizer, batch_size).score
        self.generator = generator or self._generate_locally

    def _generate_locally(self, texts: Sequence[str], max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        return generate_lines(self.model, self.tokenizer, texts, max_new_tokens, self.batch_size, temperature, seed)

    def lines(self, texts: Sequence[str], max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> list[str]:
        """The first line the model writes after each text: greedy when temperature is 0."""
        return self.generator(texts, max_new_tokens, temperature, seed)

    def prompts(self, cases: Sequence[Case]) -> list[Prompt]:
        """The cases' prompts; one that leaves no room for its answer in the model's window is a LabError."""
        built = [self.fmt.build(self.tokenizer, case.demos, case.query) for case in cases]
        self._check_window(built)
        return built

    def _check_window(self, prompts: Sequence[Prompt]) -> None:
        limit = self.window
        if limit is None or not prompts:
            return
        if self.task == "classify":
            room = max(len(encode_ids(self.tokenizer, self.fmt.continuation(label))) for label in self.labels)
        else:
            room = self.max_new_tokens
        # A token covers at least one byte (plus the tokenizer's own BOS/EOS), so only prompts with
        # that many bytes can overflow: the common case is decided without tokenizing twice.
        suspects = [prompt.text for prompt in prompts if len(prompt.text.encode()) + 2 + room > limit]
        longest = max((len(encode_ids(self.tokenizer, text)) for text in suspects), default=0)
        if longest + room > limit:
            raise LabError(f"a prompt takes {longest} tokens and its answer up to {room} more, but the model reads "
                           f"at most {limit}; lower --k or use shorter examples")

    def label_logprobs(self, cases: Sequence[Case]) -> np.ndarray:
        """(len(cases), len(labels)) log-probabilities renormalised over the labels."""
        continuations = [self.fmt.continuation(label) for label in self.labels]
        demo_sets = list(dict.fromkeys(case.demos for case in cases)) if self.calibrated else []
        free = [Case(demos, text, "") for demos in demo_sets for text in CONTENT_FREE]
        scores = self.scorer(self.prompts(list(cases) + free), continuations)
        real = normalise_rows(scores[: len(cases)])
        if not self.calibrated:
            return real
        n_free = len(CONTENT_FREE)
        position = {demos: i for i, demos in enumerate(demo_sets)}
        out = np.empty_like(real)
        for row, case in enumerate(cases):
            start = len(cases) + position[case.demos] * n_free
            out[row] = calibrate(real[row : row + 1], scores[start : start + n_free])[0]
        return out

    def predict(self, cases: Sequence[Case]) -> list[str]:
        if not cases:
            return []
        if self.task == "classify":
            best = self.label_logprobs(cases).argmax(axis=1)
            return [self.labels[i] for i in best]
        texts = [prompt.text for prompt in self.prompts(cases)]
        return self.lines(texts, self.max_new_tokens)
