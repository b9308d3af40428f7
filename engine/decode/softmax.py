"""The one place logits become probabilities: the sampleable slice of a row, and log_softmax.

A member's row may be longer than the shared vocabulary (padded vocabularies) and some ids are
never sampleable (padding tokens: the plan's `mask`); every reading of a distribution (steering
gates, speculation's draft, the plain view, logprobs, teacher-forced scoring, the sweep) starts
from the same slice, so they all see the distribution the sampler draws from.
"""

from __future__ import annotations

import numpy as np


def sampleable(
    row: np.ndarray, n_vocab: int, mask: np.ndarray | None, dtype: type = np.float64
) -> np.ndarray:
    """A copy of `row` over the shared vocabulary, masked ids (and nothing else) at -inf."""
    z = np.array(row[:n_vocab], dtype=dtype)
    if mask is not None:
        z[mask] = -np.inf
    return z


def log_softmax(logits: np.ndarray, temperature: float = 0.0) -> np.ndarray:
    """log_softmax(logits / temperature) in float64; temperature <= 0 means the raw logits."""
    x = logits.astype(np.float64)
    if temperature > 0:
        x /= temperature
    top = np.max(x)
    return x - (top + np.log(np.sum(np.exp(x - top))))


def top_probability(z: np.ndarray) -> float:
    """The probability of the most likely id (softmax of `z` at its maximum)."""
    return 1.0 / float(np.exp(z - z.max()).sum())
