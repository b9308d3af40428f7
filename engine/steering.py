"""Steering modes: where the tuned-minus-base delta is applied, and lazy small members.

* proxy: large + alpha * (tuned - base) at every token.
* plausible: the same, restricted to tokens the large model finds plausible (>= beta x its top
  probability; Li et al. 2023's adaptive plausibility constraint).
* gated: the delta only at steps a gate opens; elsewhere the large model alone decides.
* nudge: where the gate opens the tuned model's own token (or word) is taken (Fei et al. 2025).

Gates that look only at the large model's logits (top-1 probability, entropy, the reply's
opening tokens) make the small members lazy: a closed step yields a Need with only "large", and
when the gate next opens the small members' Holds catch up on every skipped token in one batch
(the common-prefix rule of Member.hold), so each token is evaluated once by each member.
"""

from __future__ import annotations

import numpy as np

from nanocommander.engine.decode_options import Steer
from nanocommander.engine.generation import Generation, Logits, Steps
from nanocommander.engine.speculative import Fuse

SMALL = ("base", "tuned")
NUDGE_WORD_MAX = 8  # a nudged word ends at the next word start, or after this many tokens


def fuser(gen: Generation) -> Fuse:
    """The per-position fusion of the stateless modes (proxy, plausible); speculation uses it too."""
    steer = gen.plan.steer
    if steer.mode != "plausible" or steer.beta <= 0.0 or not gen.plan.steered:
        return gen.fuse
    floor = float(np.log(steer.beta))
    n = gen.plan.n_vocab

    def plausible(logits: Logits, row: int) -> np.ndarray:
        out = gen.fuse(logits, row)
        large = logits["large"][row][:n]
        out[large < large.max() + floor] = -np.inf
        return out

    return plausible


def proxy(gen: Generation, fuse_row: Fuse | None = None) -> Steps:
    """Every active member evaluates every token; fuse (proxy or plausible), sample, commit."""
    fuse_row = fuse_row or gen.fuse
    while True:
        logits = yield gen.need()
        if not gen.accept(gen.sampler.sample(fuse_row(logits, -1)), gen.plan.steered):
            return


def _masked(row: np.ndarray, n_vocab: int, mask: np.ndarray | None) -> np.ndarray:
    z = row[:n_vocab].astype(np.float64)
    if mask is not None:
        z[mask] = -np.inf
    return z


def large_stats(large: np.ndarray, n_vocab: int, mask: np.ndarray | None) -> tuple[float, float]:
    """The large model's top-1 probability and entropy (nats) over the sampleable ids."""
    z = _masked(large, n_vocab, mask)
    z -= z.max()
    e = np.exp(z)
    s = e.sum()
    finite = e > 0
    entropy = float(np.log(s) - (e[finite] * z[finite]).sum() / s)
    return 1.0 / float(s), entropy


def large_opens(
    steer: Steer, large: np.ndarray, n_generated: int, n_vocab: int, mask: np.ndarray | None
) -> bool:
    """The gate's large-model test: the reply's opening, an unsure top-1, or a high entropy."""
    if not steer.large_gated or n_generated < steer.opening:
        return True
    if steer.top1 is None and steer.entropy is None:
        return False
    top1, entropy = large_stats(large, n_vocab, mask)
    return (steer.top1 is not None and top1 < steer.top1) or (
        steer.entropy is not None and entropy > steer.entropy
    )


def disagreement(tuned: np.ndarray, base: np.ndarray, n_vocab: int, mask: np.ndarray | None) -> float:
    """How far tuning moved the tuned model's favourite token: log p_tuned(x) - log p_base(x)."""
    t, b = _masked(tuned, n_vocab, mask), _masked(base, n_vocab, mask)
    x = int(np.argmax(t))
    tm, bm = t.max(), b.max()
    lt = t[x] - tm - np.log(np.exp(t - tm).sum())
    lb = b[x] - bm - np.log(np.exp(b - bm).sum())
    return float(lt - lb)


def large_gate(gen: Generation, large: np.ndarray) -> bool:
    p = gen.plan
    return large_opens(p.steer, large, gen.n_generated, p.n_vocab, p.mask)


def delta_gate(gen: Generation, logits: Logits) -> bool:
    p = gen.plan
    if p.steer.delta is None:
        return True
    return disagreement(logits["tuned"][-1], logits["base"][-1], p.n_vocab, p.mask) >= p.steer.delta


def gated(gen: Generation, *, eager: bool = False) -> Steps:
    """The delta only where the gate opens; small members run only then (unless `eager`)."""
    lazy = gen.plan.steer.large_gated and not eager
    while True:
        if lazy:
            out = dict((yield {"large": gen.hold()}))
            opened = large_gate(gen, out["large"][-1])
            if opened:
                out.update((yield {r: gen.hold() for r in SMALL}))
        else:
            out = dict((yield gen.need()))
            opened = large_gate(gen, out["large"][-1])
        opened = opened and delta_gate(gen, out)
        fused = gen.fuse(out) if opened else gen.alone(out, "large")
        if not gen.accept(gen.sampler.sample(fused), opened):
            return


def nudge(gen: Generation) -> Steps:
    """Where the large-model gate opens, the tuned model writes the next token (or word)."""
    steer = gen.plan.steer
    while True:
        if steer.large_gated:
            out = yield {"large": gen.hold()}
            if not large_gate(gen, out["large"][-1]):
                if not gen.accept(gen.sampler.sample(gen.alone(out, "large"))):
                    return
                continue
        for i in range(NUDGE_WORD_MAX if steer.word else 1):
            out = yield {"tuned": gen.hold()}
            token = gen.sampler.sample(gen.alone(out, "tuned"))
            if i > 0 and _starts_word(gen, token):
                break  # the next word is the large model's again
            if not gen.accept(token, True):
                return


def _starts_word(gen: Generation, token: int) -> bool:
    piece = gen.piece(token)
    return not piece or piece[:1].isspace() or not piece[:1].isalnum()
