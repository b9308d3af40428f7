"""Token provenance: who chose each token, read where the fused distribution is known."""

from __future__ import annotations

import pytest
from engine_helpers import GREEDY, recipe_over

from nanocommander.engine.request.decode_options import OFF, parse_steer
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite

PROMPTS = ["Hello there", "The quick brown fox", "1 2 3 4"]


def run(comp, prompt, **kw):
    kw.setdefault("sampling", GREEDY)
    kw.setdefault("num_predict", 24)
    chunks = list(comp.generate(GenerateRequest(prompt=prompt, speculative=OFF, provenance=True, **kw)))
    tokens = [t for c in chunks for t in c.token_ids]
    prov = [e for c in chunks for e in c.provenance or ()]
    return tokens, prov


@pytest.fixture(scope="module")
def comp(tiny):
    c = Composite.load(recipe_over(tiny, alpha=1.0))
    yield c
    c.close()


@pytest.fixture(scope="module")
def large_is_base(tiny):
    """large = base: the fused distribution is exactly the tuned model's at alpha 1."""
    c = Composite.load(recipe_over(tiny, large="base", alpha=1.0))
    yield c
    c.close()


def test_absent_unless_asked(comp):
    chunks = list(comp.generate(GenerateRequest(prompt="Hello", sampling=GREEDY, num_predict=8)))
    assert all(c.provenance is None for c in chunks)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_alpha_zero_every_token_is_large(comp, prompt):
    tokens, prov = run(comp, prompt, alpha=0.0)
    assert tokens and [e.token for e in prov] == tokens
    assert {e.source for e in prov} == {"large"}
    assert all(e.large_token == e.token for e in prov)  # greedy: large's own choice every time
    assert all(e.large_top == pytest.approx(e.fused_top, rel=1e-5) for e in prov)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_steered_exactly_where_fused_argmax_differs_from_large(large_is_base, prompt):
    comp = large_is_base
    ids = comp.tokenize(prompt)
    tokens, prov = run(comp, ids)
    assert [e.token for e in prov] == tokens
    # large's own greedy choice at every prefix, from a separate large-only run (one token each)
    own = [run(comp, ids + tokens[:i], member="large", num_predict=1)[0] for i in range(len(tokens))]
    expected = [i for i, o in enumerate(own) if o and o[0] != tokens[i]]
    assert [i for i, e in enumerate(prov) if e.source == "steered"] == expected
    assert expected, "the tiny tuned model should differ from its base somewhere"
    assert all(e.source in ("large", "steered") for e in prov)
    for i, e in enumerate(prov):
        if own[i]:
            assert e.large_token == own[i][0]
        assert 0.0 < e.fused_top <= 1.0 and 0.0 < e.large_top <= 1.0


def test_nudge_marks_tuned_tokens(comp):
    tuned, _ = run(comp, "Hello there", member="tuned")
    tokens, prov = run(comp, "Hello there", steer=parse_steer("nudge"))
    assert tokens[: len(tuned)] == tuned
    assert {e.source for e in prov} == {"tuned"}


def test_member_alone_and_logprobs_together(comp):
    tokens, prov = run(comp, "Hello there", member="large", logprobs=2)
    assert {e.source for e in prov} == {"large"} and len(prov) == len(tokens)
    tuned, prov = run(comp, "Hello there", member="tuned")
    assert {e.source for e in prov} == {"tuned"} and all(e.large_top is None for e in prov)
