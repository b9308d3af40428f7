"""The scheduler and the strategies on scripted members (tests/fake_member.py): no llama.cpp.

What these pin down is bookkeeping, not numerics: which member's wish wins under which alpha,
that batched requests each get their own reply and their own cache, that a warm prefix is not
evaluated again, that admission refuses past the queue, and that leaving early frees the slot.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest
from fake_member import BOS, N_VOCAB, FakeMember, fake_composite, wants

from nanocommander.engine.request.decode_options import Speculation
from nanocommander.engine.request.options import SamplingOptions
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.errors import ServerBusy

GREEDY = SamplingOptions(temperature=0)


def reply(comp, prompt: str, **kw) -> str:
    kw.setdefault("num_predict", 40)
    return "".join(c.text for c in comp.generate(GenerateRequest(prompt, sampling=GREEDY, **kw)))


def by_prompt(replies: dict[str, str]):
    """A script whose reply depends on the prompt's first byte: each request wants its own text."""
    scripts = {k.encode()[0]: wants(v) for k, v in replies.items()}

    def script(tokens: Sequence[int]) -> np.ndarray:
        first = tokens[1] if tokens and tokens[0] == BOS and len(tokens) > 1 else tokens[0]
        return scripts[first](tokens) if first in scripts else np.zeros(N_VOCAB, dtype=np.float32)

    return script


def test_alpha_moves_the_reply_from_the_large_models_wish_to_the_tuned_ones():
    comp = fake_composite(wants("plain words"), tuned=wants("ahoy matey"))
    try:
        assert reply(comp, "hi", alpha=0.0) == "plain words"
        assert reply(comp, "hi", alpha=1.0) == "ahoy matey"  # large + (tuned - base), base = large
        assert reply(comp, "hi", member="tuned") == "ahoy matey"
        assert reply(comp, "hi", member="large") == "plain words"
    finally:
        comp.close()


def test_requests_batched_together_each_get_their_own_reply():
    wanted = {"1": "apples", "2": "bananas and more", "3": "cherries", "4": "dates"}
    comp = fake_composite(by_prompt(wanted), recipe="alpha: 0\n")
    try:
        reqs = [GenerateRequest(p, sampling=GREEDY, num_predict=40) for p in wanted]
        together = ["".join(c.text for c in chunks) for chunks in comp.generate_batch(reqs)]
        assert comp.scheduler.widest == 4  # one round served all four
        assert together == list(wanted.values())
        assert [reply(comp, p) for p in wanted] == together
    finally:
        comp.close()


def test_a_warm_prefix_is_not_evaluated_again():
    comp = fake_composite(wants("ok"), recipe="alpha: 0\n")
    large: FakeMember = comp.members["large"]  # type: ignore[assignment]
    try:
        prompt = "a long shared prompt " * 8
        reply(comp, prompt)
        before = large.stats.evaluated
        reply(comp, prompt)
        assert large.stats.evaluated - before <= len("ok") + 2  # the reply's tokens, not the prompt again
    finally:
        comp.close()


def test_speculation_keeps_the_greedy_text_and_the_cache_holds_only_accepted_tokens():
    comp = fake_composite(wants("the same words either way"), tuned=wants("the same wards either way"))
    try:
        plain = reply(comp, "hi", alpha=0.5, speculative=Speculation(draft="off"))
        drafted = reply(comp, "hi", alpha=0.5, speculative=Speculation(draft="tuned", max=4))
        assert drafted == plain
        for member in comp.members.values():
            assert all(len(c) <= len(comp.tokenize("hi")) + 40 for c in member.cached)
    finally:
        comp.close()


def test_past_the_queue_the_scheduler_refuses_and_the_slot_frees_when_the_reader_leaves():
    never_ends = wants("x" * 10_000)
    comp = fake_composite(never_ends, recipe="alpha: 0\n", n_seq=1)
    comp.scheduler.max_queue = 0
    try:
        first = comp.generate(GenerateRequest("hi", sampling=GREEDY, num_predict=2000))
        next(first)  # running in the only slot
        with pytest.raises(ServerBusy):
            next(comp.generate(GenerateRequest("hi", sampling=GREEDY)))
        first.close()  # the reader leaves: cancelled within a round
        for _ in range(100):
            if not comp.scheduler.active():
                break
            threading.Event().wait(0.02)
        assert comp.scheduler.active() == []
        assert reply(comp, "hi", num_predict=3) == "xxx"
    finally:
        comp.close()
