"""Steering modes: their limits equal the large model or proxy-tuning; lazy members catch up exactly."""

from __future__ import annotations

import functools

import pytest
from engine_helpers import GREEDY, recipe_over

from nanocommander.engine.decode import steering
from nanocommander.engine.decode import strategies as decoding
from nanocommander.engine.decode.generation import Generation
from nanocommander.engine.request.decode_options import OFF, RECOMMENDED, parse_steer
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.errors import InvalidRequest

PROMPTS = [
    "Hello there",
    "The quick brown fox",
    "Once upon a time, in a land",
    "héllo wörld 日本",
    "1 2 3 4",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def comp(tiny):
    c = Composite.load(recipe_over(tiny, adapter=True, alpha=1.5))
    yield c
    c.close()


def run(comp, prompt, steer=None, **kw):
    kw.setdefault("sampling", GREEDY)
    kw.setdefault("num_predict", 32)
    req = GenerateRequest(prompt=prompt, steer=parse_steer(steer) if steer else None, speculative=OFF, **kw)
    chunks = list(comp.generate(req))
    return [t for c in chunks for t in c.token_ids], chunks[-1].stats


@pytest.mark.parametrize("prompt", PROMPTS)
def test_gate_limits_equal_large_alone_and_proxy(comp, prompt):
    large, _ = run(comp, prompt, member="large")
    proxy, stats = run(comp, prompt)
    assert stats.steered == stats.eval_count  # proxy steers every token
    never, s = run(comp, prompt, {"mode": "gated", "top1": 0.0})
    assert never == large and s.steered == 0
    assert run(comp, prompt, {"mode": "gated", "top1": 1.01})[0] == proxy  # lazy path, always open
    assert run(comp, prompt, {"mode": "gated", "entropy": -1.0})[0] == proxy
    assert run(comp, prompt, "gated")[0] == proxy  # no condition: the gate always opens
    assert run(comp, prompt, {"mode": "gated", "delta": -1e9})[0] == proxy
    assert run(comp, prompt, {"mode": "gated", "delta": 1e9})[0] == large
    assert run(comp, prompt, {"mode": "plausible", "beta": 0.0})[0] == proxy
    assert run(comp, prompt, {"mode": "plausible", "beta": 1.0})[0] == large  # only large's top survives
    tuned, _ = run(comp, prompt, member="tuned")
    assert run(comp, prompt, "nudge")[0] == tuned  # no gate: the tuned model writes every token
    assert run(comp, prompt, {"mode": "nudge", "top1": 0.0})[0] == large
    # always rejects: the tuned model writes every token, except an end of reply the large model objects to
    nudged = run(comp, prompt, {"mode": "nudge", "reject": -1.0})[0]
    assert nudged[: len(tuned)] == tuned
    assert run(comp, prompt, {"mode": "nudge", "reject": 1e9})[0] == large  # never rejects
    assert run(comp, prompt, {"mode": "gated", "reject": -1.0})[0] == proxy
    assert run(comp, prompt, {"mode": "gated", "reject": 1e9})[0] == large


# The tiny models are unsure (top-1 0.06-0.45, entropy 3.1-4.3 nats): thresholds that open about half the time.
@pytest.mark.parametrize(
    "steer",
    [
        {"mode": "gated", "top1": 0.15},
        {"mode": "gated", "entropy": 3.9, "delta": 0.2},
        {"mode": "gated", "opening": 4, "top1": 0.1},
        {"mode": "gated", "opening": 8, "top1": 0.15, "delta": 0.2},
        {"mode": "gated", "opening": 3, "follow": 2, "delta": 0.2},
        {"mode": "gated", "closing": True, "opening": 2, "follow": 3},  # reopens near the end
    ],
)
def test_lazy_catch_up_equals_eager_and_evaluates_each_token_once(comp, steer, monkeypatch):
    eager = {}
    with monkeypatch.context() as mp:
        mp.setitem(decoding.STRATEGIES, "gated", functools.partial(steering.gated, eager=True))
        for prompt in PROMPTS:
            eager[prompt] = run(comp, prompt, steer, ignore_eos=True)[0]
    steered = skipped = 0
    for prompt in PROMPTS:
        for m in comp.members.values():
            m.reset()
        before = {r: m.stats.evaluated for r, m in comp.members.items()}
        ids, stats = run(comp, prompt, steer, ignore_eos=True)
        assert ids == eager[prompt]
        for role in ("base", "tuned"):
            m = comp.members[role]
            held = sum(len(c) for c in m.cached)  # whichever slot the request ran in
            assert m.stats.evaluated - before[role] == held  # nothing evaluated twice
        large = comp.members["large"].stats.evaluated - before["large"]
        skipped += large - (comp.members["base"].stats.evaluated - before["base"])
        steered += stats.steered
        assert 0 <= stats.steered <= stats.eval_count and stats.steer_mode == "gated"
    assert steered > 0
    assert skipped > 0 or steer.get("closing")  # a closing gate catches the small members up at the end


def test_recommended_asks_the_tuned_model_lazily_and_never_the_base(comp):
    """The tuned model catches up in batches where a style may show; each token is evaluated once."""
    comp.auto_reject.resolve(comp, RECOMMENDED)  # `reject: auto` is measured once, before the first request
    skipped = 0
    for prompt in PROMPTS:
        for m in comp.members.values():
            m.reset()
        before = {r: m.stats.evaluated for r, m in comp.members.items()}
        ids, stats = run(comp, prompt, "recommended", ignore_eos=True)
        tuned = comp.members["tuned"]
        assert tuned.stats.evaluated - before["tuned"] == sum(len(c) for c in tuned.cached)
        assert comp.members["base"].stats.evaluated == before["base"]  # nudge never runs the base
        skipped += (comp.members["large"].stats.evaluated - before["large"]) - (
            tuned.stats.evaluated - before["tuned"]
        )
        assert stats.steer_mode == "nudge" and len(ids) == 32
    assert skipped > 0


def test_bad_steer_values_are_clear_errors():
    for bad, words in [
        ("fancy", "steer must be one of"),
        ({"mode": "gated", "beta": 0.5}, "not a parameter"),
        ({"mode": "plausible", "beta": 2}, "between 0 and 1"),
        ({"mode": "x"}, "steer.mode"),
        ({"mode": "gated", "top1": "high"}, "finite number"),
        (3, "mode name or an object"),
        ({"mode": "gated", "opening": -1}, ">= 0"),
        ({"mode": "gated", "follow": 1.5}, "whole number"),
        ({"mode": "gated", "sentences": "yes"}, "true or false"),
        ({"mode": "plausible", "closing": True}, "not a parameter"),
    ]:
        with pytest.raises(InvalidRequest, match=words):
            parse_steer(bad)
    assert parse_steer("recommended") == RECOMMENDED
    assert parse_steer({"mode": "recommended", "top1": 0.9}).top1 == 0.9


def test_generation_room_counts_both_limits(comp):
    gen, steps = comp.start(GenerateRequest(prompt="Hello", num_predict=5))
    steps.close()
    assert isinstance(gen, Generation) and gen.room() == 5
