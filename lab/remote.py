"""The lab's model calls on a remote OpenAI-compatible server: label scores and short answers.

    python -m lab order --backend openai --base-url http://127.0.0.1:7860/v1 --train ... --test ...

Label scoring needs the log-probability of each label's tokens after the prompt. The chat API
does not give that, but the completions API does: the prompt and the label go as token ids with
`echo=True, logprobs=1, max_tokens=1`, and the echoed prompt tokens come back scored. This is
the request lm-eval's `local-completions` sends vLLM for the same purpose; our own `/v1/completions`
answers it too. The ids come from a local copy of the model's tokenizer (the lab's `--model`), so
the remote model reads exactly the tokens the local scorer would; the two give the same numbers
for the same weights, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lab.errors import LabError
from lab.generate import first_line
from lab.prompt import Prompt, encode_ids
from lab.scorer import encode

NO_PROMPT_LOGPROBS = ("the server did not return prompt log-probabilities (it needs echo with logprobs on "
                      "/v1/completions, as vLLM and this project's server provide)")


class RemoteModel:
    """Scores and generates through `base_url`; `model` is the server's model or adapter name (None: its base)."""

    def __init__(self, base_url: str, tokenizer, model: str | None = None, api_key: str | None = None,
                 batch_size: int = 32, timeout: float = 600):
        from bot.remote import open_client, read_models

        self.client = open_client(base_url, api_key, timeout)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = model or self._call(read_models, self.client)[0]
        self._check_tokenizer()

    def _check_tokenizer(self) -> None:
        """Refuse a server whose tokenizer splits a sample text differently from the local one."""
        text = "Tokenizer check: The quick brown fox jumps over 13 lazy dogs."
        body = {"model": self.name, "prompt": text, "echo": True, "logprobs": 0, "max_tokens": 1, "temperature": 0}
        theirs = (self._post("/completions", body)["choices"][0].get("logprobs") or {}).get("tokens")
        if theirs is None:
            raise LabError(NO_PROMPT_LOGPROBS)
        mine = [self.tokenizer.decode([token]) for token in encode_ids(self.tokenizer, text)]
        if theirs[: len(mine)] != mine:
            raise LabError(f"the server's model '{self.name}' splits text into other tokens than the local tokenizer "
                           "(--model); pass the model the server runs as --model")

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> np.ndarray:
        """(len(prompts), len(continuations)) summed log-probabilities of each continuation's tokens."""
        encoded = [encode(self.tokenizer, prompt, continuations) for prompt in prompts]
        jobs = [(i, j, e.prompt_ids, ids) for i, e in enumerate(encoded) for j, ids in enumerate(e.continuation_ids)]
        scores = np.zeros((len(prompts), len(continuations)))
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start : start + self.batch_size]
            body = {"model": self.name, "prompt": [p + c for _, _, p, c in batch], "echo": True, "logprobs": 1,
                    "max_tokens": 1, "temperature": 0}
            choices = sorted(self._post("/completions", body)["choices"], key=lambda c: c["index"])
            if len(choices) != len(batch):
                raise LabError(f"the server answered {len(choices)} choices for {len(batch)} prompts")
            for (i, j, prompt_ids, ids), choice in zip(batch, choices):
                logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
                span = logprobs[len(prompt_ids) : len(prompt_ids) + len(ids)]
                if len(span) != len(ids) or any(value is None for value in span):
                    raise LabError(NO_PROMPT_LOGPROBS)
                scores[i, j] = sum(span)
        return scores

    def generate(self, texts: Sequence[str], max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> list[str]:
        """The first line the model writes after each text (raw text, no chat template).

        Each batch is one request with its own seed (`seed` plus its offset), so sampled batches do
        not repeat each other; one batch samples what the local generator samples for it.
        """
        answers = []
        for start in range(0, len(texts), self.batch_size):
            body = {"model": self.name, "prompt": list(texts[start : start + self.batch_size]),
                    "max_tokens": max_new_tokens, "temperature": temperature, "seed": seed + start}
            choices = sorted(self._post("/completions", body)["choices"], key=lambda c: c["index"])
            if len(choices) != len(body["prompt"]):
                raise LabError(f"the server answered {len(choices)} choices for {len(body['prompt'])} prompts")
            answers += [first_line(choice["text"]) for choice in choices]
        return answers

    def _post(self, path: str, body: dict) -> dict:
        from bot.remote import request_json

        return self._call(request_json, self.client, "POST", path, body)

    @staticmethod
    def _call(function, *args):
        """Run a bot.remote call; its RemoteError becomes the lab's one error type."""
        from bot.remote import RemoteError

        try:
            return function(*args)
        except RemoteError as error:
            raise LabError(str(error)) from error
