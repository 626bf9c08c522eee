"""Contextual calibration (Zhao et al. 2021, "Calibrate Before Use").

The model's label distribution for content-free inputs ("N/A", "", "[MASK]") after the same
demonstrations estimates its bias; each real prediction is divided by that estimate
(W = diag(p_cf)^-1, b = 0) before the argmax. Works on log-probabilities; no model here.
"""

from __future__ import annotations

import numpy as np

CONTENT_FREE = ("N/A", "", "[MASK]")


def normalise_rows(logprobs: np.ndarray) -> np.ndarray:
    """Log-probabilities renormalised over the labels (log-softmax over each row)."""
    shifted = logprobs - logprobs.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def content_free_bias(cf_logprobs: np.ndarray) -> np.ndarray:
    """log p_cf: the mean label distribution over the content-free inputs, (n_labels,)."""
    probs = np.exp(normalise_rows(cf_logprobs)).mean(axis=0)
    return np.log(probs / probs.sum())


def calibrate(logprobs: np.ndarray, cf_logprobs: np.ndarray) -> np.ndarray:
    """Calibrated label log-probabilities, renormalised: (n, n_labels) from (n, L) and (m, L)."""
    return normalise_rows(normalise_rows(logprobs) - content_free_bias(cf_logprobs))
