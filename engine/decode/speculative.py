"""Speculative composite decoding: draft a few tokens cheaply, verify them all in one batch.

Per round, a drafter proposes up to k tokens: the tuned member (already evaluated at every
position of the composite, so its draft costs nothing extra) or prompt lookup (the tokens that
followed the latest earlier occurrence of the last n-gram; no model cost). Large and base then
hold the committed tokens plus the draft with logits at every drafted position (one batch each);
the tuned member adds its logits after the last drafted token. The fused logits of each position
decide left to right:

* greedy: a drafted token stands if it is what the sampler chain picks from the fused logits,
  so the output is the non-speculative output token for token;
* sampling: standard speculative sampling (Leviathan et al. 2023, Chen et al. 2023) over the
  distribution after the sampler chain: accept x with probability min(1, p(x)/q(x)), else draw
  from the normalised residual max(0, p - q) and end the round; so tokens follow p exactly.

The chain runs at each position with exactly the committed history (drafted tokens are committed
one by one as they are accepted), so penalties, DRY and grammars stay exact; only samplers that
draw with their own state (mirostat, XTC) turn speculation off (`usable`). Rejected tokens leave
the members' caches at their next Hold (the common-prefix rule). The draft length adapts to
acceptance: +2 after a fully accepted round; after a rejection it drops to at most the number
accepted (so to 0 when the first draft misses), and at 0 rounds are plain steps with a one-token
probe every PROBE steps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nanocommander.engine.decode.generation import Generation, Logits, Steps
from nanocommander.engine.decode.softmax import sampleable, top_probability

Fuse = Callable[[Logits, int], np.ndarray]
DRAFT_TOP = 64  # a tuned draft is drawn from its top tokens only (q must just be known exactly)
P_MIN = 0.25  # stop drafting when the tuned model's top probability falls below this
NGRAM = (4, 3, 2)  # prompt lookup tries the longest n-gram first
PROBE = 8  # plain steps before drafting again once the draft length fell to 0


def usable(gen: Generation) -> bool:
    """Whether speculation can run for this request without changing its output distribution."""
    plan = gen.plan
    if not plan.spec.on or not gen.sampler.exact:
        return False
    return plan.spec.draft == "lookup" or plan.steered


class Lookup:
    """Prompt lookup: where did the last n tokens occur before, and what followed them."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, ...], int] = {}  # n-gram -> end of its latest earlier occurrence
        self.indexed = 0  # tokens[:indexed] are in `seen`

    def draft(self, tokens: list[int], k: int) -> list[int]:
        for end in range(max(self.indexed, 1), len(tokens)):  # n-grams ending before the last token
            for n in NGRAM:
                if end >= n:
                    self.seen[tuple(tokens[end - n : end])] = end
        self.indexed = max(len(tokens) - 1, self.indexed)
        for n in NGRAM:
            at = self.seen.get(tuple(tokens[-n:])) if len(tokens) > n else None
            if at is not None:
                return tokens[at : at + k]
        return []


class Length:
    """The draft length: grows while drafts are fully accepted, shrinks on rejection, down to 0.

    At 0 the round is a plain step (no draft); after PROBE plain steps one token is drafted again,
    so a drafter that keeps missing costs little more than no speculation.
    """

    def __init__(self, most: int):
        self.most, self.k, self.idle = most, min(4, most), 0

    def next(self) -> int:
        if self.k == 0:
            self.idle += 1
            if self.idle > PROBE:
                self.k, self.idle = 1, 0
        return self.k

    def update(self, drafted: int, accepted: int) -> None:
        if drafted and accepted == drafted:
            self.k = min(self.most, self.k + 2)
        elif drafted:
            self.k = max(0, min(self.k - 1, accepted))


def speculative(gen: Generation, fuse: Fuse | None = None) -> Steps:
    """Draft, verify in one batch, accept left to right; `fuse` turns returned rows into logits."""
    plan, sampler = gen.plan, gen.sampler
    fuse = fuse or gen.fuse
    use_tuned = plan.spec.draft == "tuned" and plan.steered
    gen.stats.speculative = "tuned" if use_tuned else "lookup"
    rng = np.random.default_rng(sampler.seed)
    length, lookup = Length(plan.spec.max), Lookup()
    logits = yield gen.need()  # the prompt: every member, last position
    if not gen.accept(sampler.sample(fuse(logits, -1)), plan.steered):
        return
    while True:
        k = min(length.next(), gen.room() - 1)
        draft: list[int] = []
        qs: list[tuple[np.ndarray, np.ndarray] | None] = []
        rows: list[np.ndarray] = []  # tuned logits predicting each drafted position
        if use_tuned and k > 0:
            row = (yield {"tuned": gen.hold()})["tuned"][-1].copy()
            rows.append(row)
            while len(draft) < k:
                token, q = _propose(gen, row, rng)
                if token < 0:
                    break
                draft.append(token)
                qs.append(q)
                if token in gen.eog or len(draft) == k:
                    break
                row = (yield {"tuned": gen.hold(gen.tokens + draft)})["tuned"][-1].copy()
                rows.append(row)
        elif k > 0:
            draft = lookup.draft(gen.tokens, k)
            qs = [None] * len(draft)
        n = len(draft)
        seq = gen.tokens + draft
        need = {r: gen.hold(seq, n + 1) for r in plan.roles}
        if rows:  # tuned already gave the rows up to the last drafted token
            if n == len(rows):
                need["tuned"] = gen.hold(seq, 1)
            else:
                del need["tuned"]
        out = dict((yield need))
        if rows:
            tail = [out["tuned"][-1]] if n == len(rows) else []
            out["tuned"] = np.stack(rows[: n + 1 - len(tail)] + tail)
        gen.stats.drafted += n
        gen.stats.rounds += n > 0
        accepted = 0
        for i in range(n + 1):
            fused = fuse(out, i)
            if i == n:
                token, ok = sampler.sample(fused), True
            else:
                token, ok = _verify(sampler, fused, draft[i], qs[i], rng)
                accepted += ok
                gen.stats.accepted += ok
            if not gen.accept(token, plan.steered):
                return
            if not ok:
                break
        length.update(n, accepted)


def _propose(gen: Generation, row: np.ndarray, rng: np.random.Generator) -> tuple[int, tuple | None]:
    """The tuned model's next draft token and the distribution q it was drawn from (None: one-hot).

    -1 when the tuned model is too unsure for a draft to be worth verifying.
    """
    z = sampleable(row, gen.plan.n_vocab, gen.plan.mask)
    opts = gen.sampler.opts
    if gen.sampler.greedy:
        best = int(np.argmax(z))
        conf = top_probability(z)
        return (best, None) if conf >= P_MIN else (-1, None)
    top = DRAFT_TOP if not 0 < opts.top_k < DRAFT_TOP else opts.top_k
    idx = np.argpartition(-z, top)[:top]
    w = np.exp((z[idx] - z[idx].max()) / max(opts.temperature, 1e-3))
    w /= w.sum()
    if w.max() < P_MIN:
        return -1, None
    j = rng.choice(len(idx), p=w)
    return int(idx[j]), (idx, w)


def _verify(sampler, fused: np.ndarray, token: int, q, rng: np.random.Generator) -> tuple[int, bool]:
    """Keep the drafted `token` or replace it; (token to commit, whether it was the draft)."""
    if sampler.greedy:
        pick = sampler.sample(fused)
        return pick, pick == token
    p = sampler.probs(fused)
    if q is None:  # a deterministic draft: q is one-hot at `token`
        q_token, residual = 1.0, p.copy()
        residual[token] = 0.0
    else:
        idx, w = q
        q_token = float(w[idx == token][0])
        residual = p.copy()
        residual[idx] = np.maximum(residual[idx] - w, 0.0)
    if rng.random() * q_token < p[token]:
        return token, True
    total = residual.sum()
    if total <= 0.0:  # p == q up to rounding: the rejection had probability ~0
        residual, total = p, p.sum()
    return int(rng.choice(len(residual), p=residual / total)), False
