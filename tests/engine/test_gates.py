"""The gate's parts, one rule each: where it opens without the small models, and when tuning may overturn."""

from __future__ import annotations

import numpy as np

from nanocommander.engine.decode.steering import GateState, large_opens, overrides, rejects
from nanocommander.engine.request.decode_options import Steer

V = 8
EOG = frozenset({7})


def row(top: int, p_top: float = 0.9) -> np.ndarray:
    """Logits whose softmax puts p_top on `top` and spreads the rest evenly."""
    z = np.full(V, np.log((1 - p_top) / (V - 1)), dtype=np.float32)
    z[top] = np.log(p_top)
    return z


def after(*pieces: bytes, steered: bool = False) -> GateState:
    at = GateState()
    for p in pieces:
        at = at.after(p, steered)
    return at


def test_sentence_starts_follow_sentence_ends_and_new_lines():
    assert GateState().sentence_start  # the reply's first token starts a sentence
    assert not after(b"Hello").sentence_start
    assert after(b"Hello", b".").sentence_start
    assert after(b"Hello", b"!  ").sentence_start
    assert after(b"Yes?").sentence_start
    assert after(b"list:", b"\n").sentence_start
    assert after(b"Hi", b".", b" ").sentence_start  # whitespace alone keeps the state
    assert not after(b"Hi", b".", b" The").sentence_start
    assert after(b"x", b"").since == 2


def test_each_large_model_test_opens_on_its_own():
    closed = GateState(since=5, sentence_start=False)
    confident, unsure = row(2, 0.95), row(2, 0.3)
    assert large_opens(Steer("gated"), confident, closed, V, None)  # no test set: always open
    assert not large_opens(Steer("gated", opening=5), confident, closed, V, None)
    assert large_opens(Steer("gated", opening=6), confident, closed, V, None)
    assert large_opens(Steer("gated", top1=0.5), unsure, closed, V, None)
    assert not large_opens(Steer("gated", top1=0.5), confident, closed, V, None)
    assert large_opens(Steer("gated", entropy=1.0), unsure, closed, V, None)
    sentences = Steer("gated", sentences=True)
    assert not large_opens(sentences, confident, closed, V, None)
    assert large_opens(sentences, confident, GateState(since=5, sentence_start=True), V, None)
    closing = Steer("gated", closing=True)
    assert large_opens(closing, row(7), closed, V, None, EOG)  # the large model wants to stop here
    assert not large_opens(closing, row(3), closed, V, None, EOG)
    banned = np.zeros(V, dtype=bool)
    banned[7] = True  # an end token the request bans cannot open the closing gate
    assert not large_opens(closing, row(7), closed, V, banned, EOG)


def test_follow_keeps_the_gate_open_for_n_tokens_after_a_steered_one():
    steer = Steer("gated", opening=1, follow=2)
    at = after(b"Ahoy", steered=True)
    assert at.quiet == 0 and large_opens(steer, row(1), at, V, None)
    at = at.after(b"!", False)
    assert at.quiet == 1 and large_opens(steer, row(1), at, V, None)
    at = at.after(b" The", False)
    assert at.quiet == 2 and not large_opens(steer, row(1), at, V, None)


def test_tuning_overturns_the_large_model_only_by_a_firm_margin():
    large, base = row(1, 0.6), np.zeros(V, dtype=np.float32)
    tuned = base.copy()
    tuned[4] = 5.0  # tuning prefers token 4 by 5 nats over the large model's token 1
    fused = large + tuned - base
    assert int(np.argmax(fused)) == 4
    logits = {"large": large[None], "base": base[None], "tuned": tuned[None]}
    assert overrides(fused, logits, Steer("gated", delta=4.0), V, None)
    assert not overrides(fused, logits, Steer("gated", delta=6.0), V, None)
    same = large + 0.1 * (tuned - base)  # too weak to change the choice: the large model's step
    assert int(np.argmax(same)) == 1 and not overrides(same, logits, Steer("gated", delta=-1e9), V, None)


def test_the_large_model_keeps_every_choice_the_tuned_model_can_live_with():
    large = row(1, 0.6)
    sure = row(4, 0.999)  # the tuned model would never write token 1 here: a style decision
    unsure = row(4, 0.5)  # token 1 is only a guess away from the tuned model's favourite
    assert rejects(large, sure, V, None, reject=6.0)
    assert not rejects(large, unsure, V, None, reject=6.0)
    assert not rejects(large, row(1, 0.99), V, None, reject=0.5)  # both choose the same token
    ends = row(7, 0.999)  # the tuned model is sure the reply ends here; the large model goes on
    assert rejects(large, ends, V, None, reject=6.0) and not rejects(large, ends, V, None, 6.0, EOG)
    base = np.zeros(V, dtype=np.float32)
    for tuned, want in ((sure, True), (unsure, False)):
        logits = {"large": large[None], "base": base[None], "tuned": tuned[None]}
        assert overrides(large + tuned - base, logits, Steer("gated", reject=6.0), V, None) is want
