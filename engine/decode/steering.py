"""Steering modes: where the tuned-minus-base delta is applied, and lazy small members.

* proxy: large + alpha * (tuned - base) at every token.
* plausible: the same, restricted to tokens the large model finds plausible (>= beta x its top
  probability; Li et al. 2023's adaptive plausibility constraint).
* gated: the delta only at steps a gate opens; elsewhere the large model alone decides.
* nudge: where the gate opens the tuned model's own token (or word) is taken (Fei et al. 2025).

A gate has two tests. The first looks only at the large model and the text so far (`large_opens`:
top-1 probability, entropy, the reply's opening, sentence starts, the reply's end, the tokens
after a steered one); it makes the small members lazy: a closed step yields a Need with only
"large", and when the gate next opens the small members' Holds catch up on every skipped token in
one batch (the common-prefix rule of Member.hold), so each token is evaluated once by each member.
The second needs the small models at that step: `overrides` (gated: tuning must overturn the large
model's choice by a margin) and `rejects` (the tuned model's own verdict on the large model's
choice, which is what separates a style decision from a leaked guess at a fact).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from nanocommander.engine.decode.generation import Generation, Logits, Need, Steps
from nanocommander.engine.decode.plain_view import PLAIN, PlainView, choose, needed, respaced
from nanocommander.engine.decode.softmax import sampleable
from nanocommander.engine.decode.speculative import Fuse
from nanocommander.engine.request.decode_options import Steer
from nanocommander.engine.text.stream import ends_sentence

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


def _top(row: np.ndarray, n_vocab: int, mask: np.ndarray | None) -> int:
    """The favourite sampleable token of one member's logits (no float64 copy: a hot path)."""
    z = row[:n_vocab]
    return int(np.argmax(z if mask is None else np.where(mask, -np.inf, z)))


def large_stats(large: np.ndarray, n_vocab: int, mask: np.ndarray | None) -> tuple[float, float]:
    """The large model's top-1 probability and entropy (nats) over the sampleable ids."""
    z = sampleable(large, n_vocab, mask)
    z -= z.max()
    e = np.exp(z)
    s = e.sum()
    finite = e > 0
    entropy = float(np.log(s) - (e[finite] * z[finite]).sum() / s)
    return 1.0 / float(s), entropy


@dataclass(frozen=True)
class GateState:
    """What the gate knows of the reply so far, besides the large model's logits at this step."""

    since: int = 0  # tokens of the reply committed so far
    sentence_start: bool = True  # the next token begins a sentence or line
    quiet: int = 1 << 30  # tokens committed since the last steered one

    def after(self, piece: bytes, steered: bool) -> GateState:
        """The state once a token with this text was committed (steered or not)."""
        ends = ends_sentence(piece)
        starts = self.sentence_start if ends is None else ends
        return GateState(self.since + 1, starts, 0 if steered else self.quiet + 1)


def large_opens(
    steer: Steer,
    large: np.ndarray,
    at: GateState,
    n_vocab: int,
    mask: np.ndarray | None,
    eog: frozenset[int] = frozenset(),
) -> bool:
    """The gate's first test, from the large model and the text so far (so small members may sleep).

    Opens in the reply's opening tokens, at a sentence start (`sentences`), where the large model
    wants to end the reply (`closing`), within `follow` tokens of a steered one, or where the large
    model is unsure (`top1`, `entropy`). With none of these set it always opens.
    """
    if not steer.large_gated:
        return True
    if at.since < steer.opening or at.quiet < steer.follow:
        return True
    if steer.sentences and at.sentence_start:
        return True
    if steer.closing and eog and _top(large, n_vocab, mask) in eog:
        return True
    if steer.top1 is None and steer.entropy is None:
        return False
    top1, entropy = large_stats(large, n_vocab, mask)
    return (steer.top1 is not None and top1 < steer.top1) or (
        steer.entropy is not None and entropy > steer.entropy
    )


def rejects(
    large: np.ndarray,
    tuned: np.ndarray,
    n_vocab: int,
    mask: np.ndarray | None,
    reject: float,
    eog: frozenset[int] = frozenset(),
) -> bool:
    """Whether the tuned model rejects the large model's choice: puts it >= `reject` nats below its own.

    Where the tuned model could live with the large model's token, that token is in the tuned
    style already, so the large model (and its knowledge) keeps the step. Style tokens are ones the
    tuned model is sure of and the large model would never write (10-30 nats apart); where
    tuning merely leaks the small model's guess at a fact, the tuned model is unsure (0-5 nats).
    Ending the reply is not a style decision: the tuned model may not end it over the large
    model's objection (an over-fitted adapter would cut every answer off after its greeting).
    """
    mine, theirs = _top(tuned, n_vocab, mask), _top(large, n_vocab, mask)
    if mine in eog and theirs not in eog:
        return False
    return float(tuned[mine]) - float(tuned[theirs]) >= reject


def rejection_margins(
    large: np.ndarray, tuned: np.ndarray, n_vocab: int, mask: np.ndarray | None = None
) -> list[float]:
    """Per position (rows of `large`, `tuned`): how many nats the tuned model puts the large
    model's favourite below its own, where they differ: the quantity `rejects` compares with
    `reject`, collected to fit `reject: auto` (engine/runtime/autoreject.py) and by calibrate."""
    out = []
    for lg, tn in zip(large, tuned, strict=True):
        mine, theirs = _top(tn, n_vocab, mask), _top(lg, n_vocab, mask)
        if mine != theirs:
            out.append(float(tn[mine]) - float(tn[theirs]))
    return out


def overrides(fused: np.ndarray, logits: Logits, steer: Steer, n_vocab: int, mask: np.ndarray | None) -> bool:
    """Whether tuning overturns the large model's choice here, firmly enough to be trusted.

    The fused top token must differ from the large model's; `delta`: the delta (tuned - base)
    prefers it over the large model's token by at least that many nats (log-probability
    differences between two tokens equal raw logit differences: the normalisers cancel);
    `reject`: the tuned model itself rejects the large model's token (see `rejects`).
    """
    large, base, tuned = logits["large"][-1], logits["base"][-1], logits["tuned"][-1]
    mine, theirs = int(np.argmax(fused[:n_vocab])), _top(large, n_vocab, mask)
    if mine == theirs:
        return False
    if steer.delta is not None:
        margin = (float(tuned[mine]) - float(base[mine])) - (float(tuned[theirs]) - float(base[theirs]))
        if margin < steer.delta:
            return False
    return steer.reject is None or rejects(large, tuned, n_vocab, mask, steer.reject)


def large_gate(gen: Generation, large: np.ndarray, at: GateState) -> bool:
    p = gen.plan
    return large_opens(p.steer, large, at, p.n_vocab, p.mask, gen.eog)


def gated(gen: Generation, *, eager: bool = False) -> Steps:
    """The delta only where the gate opens; small members run only then (unless `eager`)."""
    p = gen.plan
    lazy = p.steer.lazy and not eager
    at = GateState()
    while True:
        if lazy:
            out = dict((yield {"large": gen.hold()}))
            opened = large_gate(gen, out["large"][-1], at)
            if opened:
                out.update((yield {r: gen.hold() for r in SMALL}))
        else:
            out = dict((yield gen.need()))
            opened = large_gate(gen, out["large"][-1], at)
        if opened:
            fused = gen.fuse(out)
            if p.steer.delta is not None or p.steer.reject is not None:
                opened = overrides(fused, out, p.steer, p.n_vocab, p.mask)
        if not opened:
            fused = gen.alone(out, "large")
        token = gen.sampler.sample(fused)
        if not gen.accept(token, opened):
            return
        at = at.after(gen.piece(token), opened)


def nudge(gen: Generation) -> Steps:
    """Where the gate opens, the tuned model writes the next token (or word); the base model never runs.

    The gate: the large-model test (if any is set), then with `reject` the tuned model's own
    verdict on the large model's choice (`rejects`), which needs the tuned model at that step.
    With `plain` the large model's choice comes from its plain reading (engine/decode/plain_view.py).
    """
    p = gen.plan
    steer = p.steer
    at = GateState()
    view = PlainView(gen.tokens) if steer.reads_plainly else None
    carry: np.ndarray | None = None  # tuned logits at the committed tokens, left by a finished word
    while True:
        out: dict = {}
        opened = True
        if view is not None and not steer.views:  # plain 0: the large model reads only plainly
            out = dict((yield {"large": gen.hold(view.tokens)}))
            if view.junction:
                out["large"] = respaced(out["large"][-1], p.n_vocab, p.mask, gen.piece, gen.spaced)[None]
        elif steer.large_gated or view is not None:
            out = dict((yield {"large": gen.hold()}))
            if view is not None:
                out["large"] = (yield from _large_plainly(gen, view, out["large"][-1]))[None]
        if steer.large_gated:
            opened = large_gate(gen, out["large"][-1], at)
        if carry is not None:
            if opened:
                out["tuned"] = carry[None]
            carry = None
        if opened and steer.reject is not None:
            need = {r: gen.hold() for r in ("large", "tuned") if r not in out}
            if need:
                out.update((yield need))
            opened = rejects(out["large"][-1], out["tuned"][-1], p.n_vocab, p.mask, steer.reject, gen.eog)
        if not opened:
            token = gen.sampler.sample(gen.alone(out, "large"))
            if not gen.accept(token):
                return
            at = _committed(gen, token, False, at, view)
            continue
        for i in range(NUDGE_WORD_MAX if steer.word else 1):
            if i > 0 or "tuned" not in out:
                out = yield {"tuned": gen.hold()}
            token = gen.sampler.sample(gen.alone(out, "tuned"))
            if i > 0 and _starts_word(gen, token):
                carry = np.array(out["tuned"][-1])  # the next step may ask again at these tokens
                break  # the next word is the large model's again
            if not gen.accept(token, True):
                return
            at = _committed(gen, token, True, at, view)


def _large_plainly(
    gen: Generation, view: PlainView, styled: np.ndarray
) -> Generator[Need, Logits, np.ndarray]:
    """The large model's logits for this step under `plain`: its plain reading is evaluated only
    where it differs from the styled one and could change the choice (plain_view.needed)."""
    p = gen.plan
    beta = float(p.steer.plain)  # type: ignore[arg-type]
    plain = None
    if view.hidden and needed(styled, p.n_vocab, p.mask, beta):
        plain = (yield {PLAIN: gen.hold(view.tokens)})[PLAIN][-1]
    return choose(styled, plain, p.n_vocab, p.mask, beta)


def _committed(
    gen: Generation, token: int, steered: bool, at: GateState, view: PlainView | None
) -> GateState:
    piece = gen.piece(token)
    if view is not None:
        view.add(token, piece, steered)
    return at.after(piece, steered)


def _starts_word(gen: Generation, token: int) -> bool:
    piece = gen.piece(token)
    return not piece or piece[:1].isspace() or not piece[:1].isalnum()
