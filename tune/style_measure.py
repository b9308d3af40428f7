"""A style measure that needs no marker: how much more the tuned model likes a reply than its base.

A substring marker ("matey") needs the user to know their style's tell, and some styles have none
(terse answers, a persona's vocabulary). The adapter itself knows its style: a reply is in the
tuned style when the tokens the tuned model likes far more than its base does are there: the mean
of the reply's 4 highest per-token log-likelihood ratios, log p_tuned - log p_base, is high. The
top 4 rather than all tokens, because a style may live in a few of them (a greeting, a sign-off,
"Arr!") while the rest is the large model's own wording, which is what steering aims at: over the
zoo's replies the top-4 mean agreed with the styles' markers on 88 % against 79 % for the plain
mean (bench/zoo/measure_study.py). It misses what no token shows: a terse style is in the reply's
length, and there the plain mean agreed more (82 % against 53 %). The threshold is fitted per
adapter, from the tuned model's own greedy replies (styled by definition) against the base model's
(unstyled), to the same prompts: the midpoint that best separates the two groups. Fitting per adapter is the point: an under-fitted rank-4
adapter and an over-fitted rank-32 one live at very different ratios.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StyleMeasure:
    """The fitted threshold (nats per token) and the two groups' means it came from."""

    threshold: float
    tuned_mean: float
    base_mean: float
    separation: float  # fraction of the fitting replies on the right side of the threshold

    def styled(self, ratio: float) -> bool:
        return math.isfinite(ratio) and ratio > self.threshold

    def to_dict(self) -> dict[str, float]:
        return {
            "threshold": self.threshold,
            "tuned_mean": self.tuned_mean,
            "base_mean": self.base_mean,
            "separation": self.separation,
        }


def fit_threshold(tuned: Sequence[float], base: Sequence[float]) -> StyleMeasure:
    """The threshold that best separates `tuned` ratios (styled) from `base` ones (not).

    Candidates are the midpoints between consecutive sorted values; the one with the most replies
    on their own side wins (ties: the midpoint nearest the middle of the two means). With no
    overlap this is the gap between the lowest tuned and the highest base ratio.
    """
    t = [x for x in tuned if math.isfinite(x)]
    b = [x for x in base if math.isfinite(x)]
    if not t or not b:
        raise ValueError(
            "fitting the style threshold needs finite ratios from both the tuned and the base replies"
        )
    values = sorted(set(t) | set(b))
    cuts = [(lo + hi) / 2 for lo, hi in zip(values, values[1:], strict=False)] or [values[0]]
    centre = (float(np.mean(t)) + float(np.mean(b))) / 2

    def right(cut: float) -> int:
        return sum(x > cut for x in t) + sum(x <= cut for x in b)

    best = max(cuts, key=lambda c: (right(c), -abs(c - centre)))
    return StyleMeasure(float(best), float(np.mean(t)), float(np.mean(b)), right(best) / (len(t) + len(b)))


def _top_mean(k: int):
    def stat(r: np.ndarray) -> float:
        return float(np.mean(np.sort(r)[-k:])) if len(r) else math.nan

    return stat


def _mean(r: np.ndarray) -> float:
    return float(np.mean(r)) if len(r) else math.nan


def _sum(r: np.ndarray) -> float:
    return float(np.sum(r)) if len(r) else math.nan


# Statistics of a reply's per-token log-ratios (bench/zoo/measure_study.py compares them on the zoo)
STATISTICS = {"mean": _mean, "sum": _sum, "top4 mean": _top_mean(4), "top8 mean": _top_mean(8)}
DEFAULT = "top4 mean"  # the statistic `text_ratio` (eval --style-measure, calibrate) uses


def token_ratios(comp, prompt: str, reply: str) -> np.ndarray:
    """Per token of `reply` (text after a rendered chat prompt): log p_tuned - log p_base.

    Teacher-forced by the engine's own `Composite.score` with each small member alone, so these
    are the distributions the tuned and base members give when serving."""
    prompt_ids = comp.tokenize(prompt, add_bos=True, special=True)
    full = comp.tokenize(prompt + reply, add_bos=True, special=True)
    n = 0
    while n < min(len(prompt_ids), len(full)) and prompt_ids[n] == full[n]:
        n += 1
    if n >= len(full):
        return np.zeros(0)
    return comp.score(full, n, member="tuned") - comp.score(full, n, member="base")


def text_ratio(comp, prompt: str, reply: str) -> float:
    """The reply's style statistic (mean per-token log-ratio) of `token_ratios`."""
    return STATISTICS[DEFAULT](token_ratios(comp, prompt, reply))


def agreement(measured: Sequence[bool], marked: Sequence[bool]) -> float:
    """Fraction of replies on which the measure and the marker agree."""
    if len(measured) != len(marked) or not measured:
        raise ValueError("agreement needs two equally long, non-empty lists")
    return sum(a == b for a, b in zip(measured, marked, strict=True)) / len(measured)
