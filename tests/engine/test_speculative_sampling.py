"""Speculative sampling keeps the composite's distribution; a broken acceptance rule is caught.

The reference is exact, not sampled: the probabilities of every (first, second) token pair under
the non-speculative composite, from `Sampler.probs` (itself checked against `Sampler.sample`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from engine_helpers import recipe_over

from nanocommander.engine.decode import speculative
from nanocommander.engine.llama.sampler import Sampler
from nanocommander.engine.request.decode_options import parse_speculative
from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite

OPTS = {"temperature": 1.0, "top_k": 6, "top_p": 1.0, "repeat_penalty": 1.0}
PROMPT = "Once upon a time"
ALPHA = 2.0
RUNS = 800  # fixed seeds 0..799: the test is deterministic


def chi2_critical(df: int, z: float = 3.72) -> float:
    """The chi-squared value exceeded with probability ~1e-4 (Wilson-Hilferty)."""
    k = 2.0 / (9.0 * df)
    return df * (1.0 - k + z * math.sqrt(k)) ** 3


def chi2(counts: dict, expected: dict, n: int) -> tuple[float, int]:
    """Pearson's statistic over cells with expected count >= 5 (the rest pooled into one cell)."""
    stat, df, rest_obs, rest_exp = 0.0, -1, 0.0, 0.0
    for key in set(expected) | set(counts):
        e = expected.get(key, 0.0) * n
        o = counts.get(key, 0)
        if e >= 5:
            stat += (o - e) ** 2 / e
            df += 1
        else:
            rest_obs, rest_exp = rest_obs + o, rest_exp + e
    if rest_exp > 0:
        stat += (rest_obs - rest_exp) ** 2 / max(rest_exp, 1.0)
        df += 1
    elif rest_obs:
        stat = math.inf
    return stat, max(df, 1)


@pytest.fixture(scope="module")
def comp(tiny):
    c = Composite.load(recipe_over(tiny))
    yield c
    c.close()


def exact_pairs(comp) -> dict[tuple[int, int], float]:
    """P(t1, t2) of the non-speculative composite, computed from the fused logits."""
    ids = comp.tokenize(PROMPT)
    members = [comp.members[r] for r in ("large", "base", "tuned")]
    sampler = Sampler(merge_sampling(OPTS), comp.primary.vocab, comp.vocab.n_vocab)
    try:
        p1 = sampler.probs(comp.fused_logits(members, ALPHA, ids))
        out = {}
        for t1 in np.flatnonzero(p1):
            p2 = sampler.probs(comp.fused_logits(members, ALPHA, ids + [int(t1)]))
            for t2 in np.flatnonzero(p2):
                out[(int(t1), int(t2))] = float(p1[t1] * p2[t2])
        return out
    finally:
        sampler.close()


def sampled_pairs(comp, n: int) -> tuple[dict[tuple[int, int], int], int]:
    counts: dict[tuple[int, int], int] = {}
    drafted = 0
    for seed in range(n):
        req = GenerateRequest(
            prompt=PROMPT,
            sampling=merge_sampling({**OPTS, "seed": seed}),
            num_predict=3,
            alpha=ALPHA,
            ignore_eos=True,
            speculative=parse_speculative("tuned"),
        )
        chunks = list(comp.generate(req))
        ids = tuple(t for c in chunks for t in c.token_ids)[:2]  # the second token is always drafted
        drafted += chunks[-1].stats.drafted
        counts[ids] = counts.get(ids, 0) + 1
    return counts, drafted


def test_probs_is_what_sample_draws(comp):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, comp.vocab.n_vocab).astype(np.float32)
    for opts in (
        {"temperature": 0.7, "top_k": 8},
        {"temperature": 1.3, "top_k": 0, "top_p": 0.5},
        {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.2},
    ):
        s = Sampler(
            merge_sampling({**opts, "seed": 3, "repeat_penalty": 1.0}), comp.primary.vocab, comp.vocab.n_vocab
        )
        try:
            p = s.probs(logits)
            n = 3000
            counts: dict = {}
            for _ in range(n):
                t = s.sample(logits)
                counts[t] = counts.get(t, 0) + 1
            stat, df = chi2(counts, {int(i): float(p[i]) for i in np.flatnonzero(p)}, n)
            assert stat < chi2_critical(df), opts
        finally:
            s.close()


def test_sampling_distribution_matches_and_broken_rules_fail(comp, monkeypatch):
    monkeypatch.setattr(speculative, "P_MIN", 0.0)  # a draft at every position
    expected = exact_pairs(comp)
    counts, drafted = sampled_pairs(comp, RUNS)
    assert drafted >= RUNS  # every second token went through the acceptance rule
    stat, df = chi2(counts, expected, RUNS)
    assert stat < chi2_critical(df), (stat, df)

    def always_accept(sampler, fused, token, q, rng):
        return token, True

    def resample_from_p(sampler, fused, token, q, rng):  # right test, wrong residual
        p = sampler.probs(fused)
        idx, w = q
        if rng.random() * float(w[idx == token][0]) < p[token]:
            return token, True
        return int(rng.choice(len(p), p=p / p.sum())), False

    for broken in (always_accept, resample_from_p):
        monkeypatch.setattr(speculative, "_verify", broken)
        counts, _ = sampled_pairs(comp, RUNS)
        stat, df = chi2(counts, expected, RUNS)
        assert stat > chi2_critical(df), broken.__name__
