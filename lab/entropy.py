"""Order selection without labelled data (Lu et al. 2022, "Fantastically Ordered Prompts").

The model writes a probe set itself: after a shuffled copy of the demonstrations and "Input:",
it samples a new input. Each candidate order is then run on the probe inputs, and scored by
- GlobalE: entropy of the histogram of its predicted labels (an order that always says the same
  label is poor), and
- LocalE: the mean entropy of its per-probe label distributions (an overconfident order is poor).
The orders with the highest score are chosen: one, or several tied (GlobalE over a few probes takes
few values), which the order experiment counts as their mean. This module needs label
log-probabilities, so it serves classification only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from lab.predict import Case, Predictor
from lab.prompt import Demo

PROBE_TEMPERATURE = 1.0
PROBE_TOKENS = 40


def probe_inputs(predictor: Predictor, demos: Sequence[Demo], size: int, seed: int) -> list[str]:
    """Up to `size` distinct non-empty inputs sampled after shuffled copies of the demonstrations."""
    rng = random.Random(seed)
    texts = []
    for _ in range(size):
        order = list(demos)
        rng.shuffle(order)
        texts.append(predictor.fmt.probe_prefix(order))
    lines = predictor.lines(texts, PROBE_TOKENS, temperature=PROBE_TEMPERATURE, seed=seed)
    probes = list(dict.fromkeys(line for line in lines if line))
    return probes or [demo.input for demo in demos]


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy (nats) along the last axis."""
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=-1)


def global_entropy(logprobs: np.ndarray) -> float:
    """Entropy of the predicted-label histogram of one order over the probes: (n_probes, n_labels) in."""
    counts = np.bincount(logprobs.argmax(axis=1), minlength=logprobs.shape[1])
    return float(entropy(counts / counts.sum()))


def local_entropy(logprobs: np.ndarray) -> float:
    """Mean entropy of the per-probe label distributions."""
    return float(entropy(np.exp(logprobs)).mean())


def rank_orders(predictor: Predictor, demos: Sequence[Demo], orders: Sequence[tuple[int, ...]],
                probes: Sequence[str]) -> dict:
    """GlobalE and LocalE of every order, and each criterion's chosen orders: those that share its best
    score (more than one where the probes cannot tell them apart)."""
    cases = [Case(tuple(demos[i] for i in order), probe, "") for order in orders for probe in probes]
    logprobs = predictor.label_logprobs(cases).reshape(len(orders), len(probes), -1)
    globale = [global_entropy(block) for block in logprobs]
    locale = [local_entropy(block) for block in logprobs]
    return {
        "globale": globale,
        "locale": locale,
        "globale_orders": [list(orders[i]) for i in _best(globale)],
        "locale_orders": [list(orders[i]) for i in _best(locale)],
    }


def _best(scores: Sequence[float]) -> list[int]:
    """The positions of the highest score: one, or several tied (a criterion built on a label histogram
    over a few probes takes few distinct values, so ties are common)."""
    top = max(scores)
    return [i for i, score in enumerate(scores) if abs(score - top) <= 1e-9]
