"""Sweep scores equal the engine's own per-token distributions, for every mode.

Each mode's reference is the engine generating for real (`Composite.generate`: the scheduler, the
members' own incremental Holds, lazy catch-ups, the plain reading's second sequence) with a
sampler that draws a fixed token sequence, and reading each token's log-probability from the
engine's `logprobs` (the distribution that token was sampled from). The sweep's teacher-forced
score of the same tokens (`score_all`, one pass of the members per example) must be the same
numbers: a sweep that scored a mode with rules of its own would fail here wherever they differ.
The composite is loaded in the reproducible mode, so a position's logits do not depend on how it
was batched and the comparison can be exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import recipe_yaml

from nanocommander.engine.request.decode_options import OFF, RECOMMENDED, Steer
from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.tune import forced
from nanocommander.tune.sweep import Setting, score_all
from nanocommander.tune.tokens import Encoded

PROMPTS = [
    "Hello there",
    "The quick brown fox",
    "Once upon a time, in a land",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
]

# The tiny models are unsure (top-1 0.06-0.45): thresholds that steer some tokens and not others,
# so a wrong gate, nudge or reading changes some of the numbers.
MODES = {
    "large": Setting("large", "large"),
    "tuned": Setting("tuned", "tuned"),
    "proxy": Setting("proxy", alpha=1.5, steer=Steer()),
    "plausible": Setting("plausible", steer=Steer("plausible", beta=0.1)),
    "gated-delta": Setting("gated delta", steer=Steer("gated", entropy=3.9, delta=0.2)),
    "gated-reject": Setting("gated reject", steer=Steer("gated", opening=2, reject=2.0)),
    "nudge-word": Setting(
        "nudge word", steer=Steer("nudge", reject=3.0, word=True, sentences=True, closing=True, follow=2)
    ),
    "nudge-plain": Setting("nudge plain", steer=dataclasses.replace(RECOMMENDED, reject=3.0, plain=0.1)),
    "nudge-plain-0": Setting("nudge plain 0", steer=dataclasses.replace(RECOMMENDED, reject=3.0, plain=0.0)),
    "recommended": Setting("recommended", steer=RECOMMENDED),
}
PARTLY_STEERED = {"gated-delta", "gated-reject", "nudge-word", "nudge-plain", "nudge-plain-0", "recommended"}


@pytest.fixture(scope="module")
def comp(tiny):
    text = recipe_yaml(tiny, "forced", adapter=True, alpha=1.0, extra="parameters: {deterministic: true}\n")
    c = Composite.load(Recipe.parse(text, check_files=True), views=True)
    yield c
    c.close()


def _request(comp, s: Setting, prompt: str, **kw) -> GenerateRequest:
    # sentence ends made likely in what is drawn (not in the distributions), so sentences finish
    ends = {comp.tokenize(x, add_bos=False)[0]: 4.0 for x in (".", "!", "\n")}
    sampling = merge_sampling({"temperature": 0, "repeat_penalty": 1.0, "logit_bias": ends})
    return GenerateRequest(
        prompt=prompt,
        sampling=sampling,
        num_predict=30,
        alpha=s.alpha,
        member=s.member,
        steer=s.steer,
        speculative=OFF,
        **kw,
    )


def engine_reading(comp, s: Setting, monkeypatch) -> tuple[list[Encoded], list[float], int, int]:
    """Per prompt: the engine's greedy reply under `s`, then the engine generating those tokens again
    (drawn by a scripted sampler) with the log-probability of each read by the engine itself."""
    encoded, reference, steered, written = [], [], 0, 0
    for prompt in PROMPTS:
        chunks = list(comp.generate(_request(comp, s, prompt)))
        tokens = [t for c in chunks for t in c.token_ids]
        with monkeypatch.context() as mp:
            mp.setattr(
                "nanocommander.engine.runtime.composite.Sampler",
                lambda *a, tokens=tokens, **k: forced.ForcingSampler(tokens),
            )
            again = list(comp.generate(_request(comp, s, prompt, logprobs=0)))
        assert [t for c in again for t in c.token_ids] == tokens
        reference += [e.logprob for c in again for e in c.logprobs or ()]
        steered += again[-1].stats.steered
        written += again[-1].stats.eval_count
        ids = comp.tokenize(prompt, add_bos=True)
        encoded.append(Encoded(ids=ids + tokens, mask=[False] * len(ids) + [True] * len(tokens), line=0))
    return encoded, reference, steered, written


@pytest.mark.parametrize("mode", list(MODES))
def test_sweep_scores_are_the_engines_own_distributions(comp, mode, monkeypatch):
    setting = MODES[mode]
    encoded, reference, steered, written = engine_reading(comp, setting, monkeypatch)
    if mode in PARTLY_STEERED:  # both branches of the rule ran, so the comparison can tell them apart
        assert 0 < steered < written, (steered, written)
    scored = dataclasses.replace(setting, token_logprobs=[], nll=0.0, tokens=0)
    score_all(comp, encoded, [scored])
    assert len(scored.token_logprobs) == len(reference) == written
    np.testing.assert_allclose(scored.token_logprobs, reference, rtol=0, atol=1e-6)


def test_the_plain_reading_runs_for_real_and_the_rest_comes_from_one_pass(comp, monkeypatch):
    encoded, _, _, _ = engine_reading(comp, MODES["nudge-plain"], monkeypatch)
    served = evaluated = 0
    for enc in encoded:
        ((begin, end),) = forced.spans(enc.mask)
        teacher = forced.Teacher(comp, enc.ids, begin, ("large", "tuned"))
        forced.logprobs(
            comp, teacher, GenerateRequest(prompt=[], steer=MODES["nudge-plain"].steer), begin, end
        )
        served, evaluated = served + teacher.served, evaluated + teacher.evaluated
    assert evaluated > 0  # the plain reading left a sentence out: not a prefix of the example
    assert served > 2 * evaluated  # every other Need came from the example's one pass


def test_a_reply_past_an_end_of_turn_token_goes_on_as_a_new_request(comp):
    """A chat template's span ends "<|im_end|>\\n": the newline after the end token is scored too,
    as a new request from there (a request stops at its end token)."""
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = comp.tokenize(prompt + "Yes.<|im_end|>\nok")
    begin = len(comp.tokenize(prompt))
    assert ids[:begin] == comp.tokenize(prompt) and comp.vocab.eog & set(ids[begin:-2])
    s = Setting("large", "large")
    score_all(comp, [Encoded(ids=ids, mask=[i >= begin for i in range(len(ids))], line=0)], [s])
    assert s.tokens == len(ids) - begin
    alone = comp.score(ids, begin, member="large")  # the engine's own teacher-forced reading of one member
    np.testing.assert_allclose(s.token_logprobs, alone, rtol=0, atol=1e-5)


def test_spans_are_the_runs_of_learned_positions():
    assert forced.spans([True, True, False, True, True, False, False, True]) == [(1, 2), (3, 5), (7, 8)]
    assert forced.spans([False, False]) == []
