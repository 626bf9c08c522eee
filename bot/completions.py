"""Raw-text completions with token log-probabilities: the engine behind `POST /v1/completions`.

Chat requests go through the chat template; these do not. A prompt is token ids (or text the
tokenizer turns into ids), the model continues it, and with `logprobs` each token gets its
log-probability given everything before it, plus the `top` most likely alternatives. With
`echo` the prompt's own tokens are scored too, which is how a remote client measures the
probability of a label after a few-shot prompt (what `lab.remote` does, and what lm-eval's
`local-completions` does against vLLM: `echo=True, logprobs=1, max_tokens=1`).

    rows = complete_tokens(generator, [ids_a, ids_b], 1, settings, adapter="base", logprobs=1, echo=True)

Rows run in left-padded sub-batches under the generator's lock, all with the same adapter.
Scores come from one extra forward pass over prompt + answer with the real tokens' positions,
so they equal scoring each row alone (up to float rounding of the batch shape). Both the
generation and the scoring pass run under `spaces.GPU` on a ZeroGPU Space (`bot.zerogpu`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from bot.generation import BASE, PEFT_BASE, stopping_on
from bot.settings import GenerationSettings

MAX_TOP_LOGPROBS = 20
GENERATE_ROWS = 16
"""Rows per generation batch."""
SCORE_TOKENS = 4096
"""Padded tokens per scoring batch: bounds the logits held at once (tokens x vocabulary floats)."""


@dataclass
class TokenScores:
    """Log-probabilities for a run of tokens: `logprobs[i]` is None for a sequence's first token."""

    ids: list[int]
    logprobs: list[float | None]
    top: list[dict[int, float] | None]


@dataclass
class TokenCompletion:
    prompt_ids: list[int]
    new_ids: list[int]
    finish_reason: str
    """`stop` (end of sequence) or `length` (max_tokens reached)."""
    scores: TokenScores | None = None
    """The prompt's and the answer's tokens with `echo`, the answer's alone without; None without logprobs."""
    stop_strings: tuple[str, ...] = ()
    """Stop strings the answer reached (the API cuts the shown text before them)."""


def complete_tokens(generator, rows: list[list[int]], max_tokens: int, settings: GenerationSettings,
                    adapter: str = BASE, logprobs: int | None = None, echo: bool = False,
                    cancel: threading.Event | None = None) -> list[TokenCompletion]:
    """Continue every row of token ids by up to `max_tokens` tokens (0: score only).

    `settings` gives the sampling (temperature, top_p, seed); its max_new_tokens is not used.
    `cancel` (set from any thread: the client left) ends generation at the next token and skips
    the scoring; the rows then have what they got, and no scores.
    """
    if not rows or any(not row for row in rows):
        raise ValueError("every prompt needs at least one token")
    if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise ValueError(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {logprobs}")
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be at least 0, got {max_tokens}")
    window = generator.context_window
    longest = max(len(row) for row in rows)
    if longest + max_tokens > window:
        raise ValueError(
            f"prompt of {longest} tokens plus max_tokens {max_tokens} exceeds the model's "
            f"context window of {window} tokens"
        )
    with generator.lock:
        new = [[] for _ in rows]
        if max_tokens:
            sampling = replace(settings, max_new_tokens=max_tokens)
            for start in range(0, len(rows), GENERATE_ROWS):
                if cancel is not None and cancel.is_set():  # the rest stay empty: nobody reads them
                    break
                # each sub-batch draws from its own seed: with the request's for all, a row of one would
                # draw what the row at its place in another drew (copies of a prompt 16 rows apart)
                new[start : start + GENERATE_ROWS] = _generate(generator, rows[start : start + GENERATE_ROWS],
                                                              sampling.seed_moved_by(start), adapter, cancel)
        finished = [_cut_at_eos(generator, ids, max_tokens) for ids in new]
        scored = None
        if logprobs is not None and not (cancel and cancel.is_set()):
            scored = score_rows(generator, [row + ids for row, (ids, _) in zip(rows, finished)], adapter, logprobs)
    completions = []
    for index, (row, (ids, finish)) in enumerate(zip(rows, finished)):
        scores = None
        if scored is not None:
            scores = scored[index] if echo else _tail(scored[index], len(ids))
        completions.append(TokenCompletion(row, ids, finish, scores))
    return completions


def _generate(generator, rows: list[list[int]], settings: GenerationSettings, adapter: str,
              cancel: threading.Event | None = None) -> list[list[int]]:
    inputs = generator._left_pad(rows)
    output = generator._generate(inputs, settings, [adapter] * len(rows), **stopping_on(cancel))
    return output[:, inputs["input_ids"].shape[1]:].tolist()


def _cut_at_eos(generator, ids: list[int], max_new_tokens: int) -> tuple[list[int], str]:
    """A row's new tokens through its first end-of-sequence token (later ones are batch padding)."""
    eos_ids = generator._eos_ids()
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[: position + 1], "stop"
    return ids, "length" if len(ids) >= max_new_tokens else "stop"  # max_tokens 0 is "length", as vLLM says


def _tail(scores: TokenScores, n: int) -> TokenScores:
    if n == 0:
        return TokenScores([], [], [])
    return TokenScores(scores.ids[-n:], scores.logprobs[-n:], scores.top[-n:])


def score_rows(generator, rows: list[list[int]], adapter: str, top: int) -> list[TokenScores]:
    """Every token's log-probability given the tokens before it; call with the generator's lock held."""
    resident = generator.resident_adapters()
    if adapter != BASE and adapter not in resident:
        raise ValueError(f"unknown adapter '{adapter}'; available: {', '.join([BASE, *resident])}")
    name = PEFT_BASE if adapter == BASE else adapter
    results: list[TokenScores] = []
    for batch in _token_batches(rows, SCORE_TOKENS):
        inputs = generator._left_pad(batch)
        names = [name] * len(batch) if resident else None
        results += generator.leased(inputs, _ONE_STEP, names, function=_score_rows_now, model=generator.loaded.model,
                                    rows=batch, top=top)
    return results


_ONE_STEP = GenerationSettings(max_new_tokens=1)
"""What a scoring pass costs in ZeroGPU's lease arithmetic: one step per row."""


def _token_batches(rows: list[list[int]], budget: int) -> list[list[list[int]]]:
    """Consecutive rows grouped so that rows x longest row stays within `budget` (one row at least)."""
    batches, current, longest = [], [], 0
    for row in rows:
        if current and max(longest, len(row)) * (len(current) + 1) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(row)
        longest = max(longest, len(row))
    return batches + [current] if current else batches


def _score_rows_now(inputs: dict, settings: GenerationSettings, adapters: list[str] | None, model,
                    rows: list[list[int]], top: int) -> list[TokenScores]:
    """One padded batch's scores as plain Python values (so a ZeroGPU call returns no GPU tensors)."""
    import torch

    mask = inputs["attention_mask"]
    extra = {"adapter_names": adapters} if adapters else {}
    with torch.inference_mode():
        logits = model(**inputs, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False, **extra).logits
    width = mask.shape[1]
    results = []
    for b, row in enumerate(rows):
        # position p predicts token p + 1: row token j (j >= 1) is scored at position start + j - 1
        predicted = logits[b, width - len(row) : width - 1].float()
        normaliser = predicted.logsumexp(dim=-1)
        ids = torch.tensor(row[1:], device=predicted.device)
        chosen = (predicted.gather(-1, ids[:, None])[:, 0] - normaliser).tolist()
        tops: list[dict[int, float] | None] = [None]
        if top:
            values, indices = predicted.topk(top, dim=-1)
            values = values - normaliser[:, None]
            tops += [dict(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]
        else:
            tops += [{} for _ in chosen]
        results.append(TokenScores(list(row), [None, *chosen], tops))
    return results

