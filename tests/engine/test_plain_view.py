"""The large model's plain reading (steer `plain`): what it leaves out, how it picks, and that it is lazy
yet exact: the same tokens as reading plainly at every step, each plain token evaluated once."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import GREEDY, recipe_over
from tiny_models import LARGE, write_model

from nanocommander.engine.decode.plain_view import PlainView, choose, needed, respaced
from nanocommander.engine.llama.member import Hold
from nanocommander.engine.request.decode_options import OFF, RECOMMENDED, parse_steer
from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.errors import InvalidRequest

V = 6


def test_the_plain_reading_leaves_out_finished_sentences_the_tuned_model_wrote_most_of():
    view = PlainView([1, 2])  # the prompt
    for token, piece, steered in [
        (10, b"Ahoy", True),
        (11, b" matey", True),
        (12, b"!", False),  # 2 of 3 steered: the tuned model's sentence
        (13, b" The", False),
        (14, b" skin", False),
        (15, b".", True),  # 1 of 3: the large model's, kept
        (16, b" Arr", True),
    ]:
        view.add(token, piece, steered)
    assert view.tokens == [1, 2, 13, 14, 15, 16]  # the sentence being written is always read
    assert view.hidden == 3
    view.add(17, b" \n", True)  # ends the line: "Arr\n" was the tuned model's
    assert view.tokens == [1, 2, 13, 14, 15] and view.hidden == 5
    assert not view.junction  # the left-out line ended in a new line: nothing to join
    view.add(18, b" Yo", True)
    view.add(19, b" ho!", True)
    assert view.junction and view.tokens == [1, 2, 13, 14, 15]  # joined to whatever follows
    view.add(20, b" ", False)  # blank text ends nothing
    assert not view.junction and view.tokens == [1, 2, 13, 14, 15, 20]


def probs(*p: float) -> np.ndarray:
    return np.log(np.array(p, dtype=np.float32))


def test_the_plain_reading_picks_among_the_tokens_the_styled_reading_finds_plausible():
    styled = probs(0.52, 0.30, 0.02, 0.04, 0.05, 0.05)  # "liver", "skin", "heart", ...
    plain = probs(0.05, 0.80, 0.10, 0.01, 0.02, 0.02)
    out = choose(styled, plain, V, None, 0.1)
    assert int(np.argmax(out)) == 1  # the plain reading's favourite, plausible to the styled one
    assert np.isinf(out[[2, 3, 4, 5]]).all() and out[1] == plain[1]  # heart: < 0.1 x 0.52 when styled
    # where no other token is plausible the plain reading is not needed, and could not change the choice
    sure = probs(0.92, 0.04, 0.01, 0.01, 0.01, 0.01)
    assert not needed(sure, V, None, 0.1) and needed(styled, V, None, 0.1)
    assert np.isfinite(choose(sure, plain, V, None, 0.1)).sum() == 1
    assert np.array_equal(
        np.isfinite(choose(sure, None, V, None, 0.1)), np.isfinite(choose(sure, plain, V, None, 0.1))
    )
    banned = np.zeros(V, dtype=bool)
    banned[1] = True  # a banned id stays banned whatever the plain reading says
    assert int(np.argmax(choose(styled, plain, V, banned, 0.1))) == 0


@pytest.fixture(scope="module")
def comp(tiny, tmp_path_factory):
    """A large model sure enough of some tokens (top-1 above 1 / (1 + beta)) that reading plainly is skipped."""
    sharp = write_model(tmp_path_factory.mktemp("sharp") / "large.gguf", seed=1, shape=LARGE, sharpness=3.0)
    c = Composite.load(recipe_over({**tiny, "sharp": sharp}, large="sharp", adapter=True), views=True)
    yield c
    c.close()


PROMPTS = ["Hello there", "The quick brown fox", "Once upon a time", "1 2 3 4", "héllo wörld"]


def run(comp, prompt, steer, sampling):
    req = GenerateRequest(
        prompt=prompt,
        steer=parse_steer(steer),
        speculative=OFF,
        num_predict=40,
        sampling=sampling,
        ignore_eos=True,
    )
    chunks = list(comp.generate(req))
    return [t for c in chunks for t in c.token_ids], chunks[-1].stats


def fresh_run(comp, prompt, steer, sampling):
    """A run from empty caches: its tokens, and how many positions the large model evaluated."""
    for m in comp.members.values():
        m.reset()
    large = comp.members["large"]
    before = large.stats.evaluated
    ids, stats = run(comp, prompt, steer, sampling)
    plain = sum(len(c) for c in large.cached[comp.n_parallel :])
    return ids, stats, large.stats.evaluated - before, plain


@pytest.mark.parametrize(("beta", "reject"), [(0.1, 3.0), (0.5, 4.0), (0.1, 6.0)])
def test_lazy_plain_reading_equals_reading_plainly_at_every_step(comp, beta, reject, monkeypatch):
    # Sentence ends made likely (in both members' sampled tokens), so the tuned model finishes sentences.
    ends = {comp.tokenize(s, add_bos=False)[0]: 4.0 for s in (".", "!", "\n")}
    sampling = merge_sampling({"temperature": 0, "repeat_penalty": 1.0, "logit_bias": ends})
    steer = {**RECOMMENDED.to_dict(), "mode": "nudge", "plain": beta, "reject": reject}
    with monkeypatch.context() as mp:
        mp.setattr("nanocommander.engine.decode.steering.needed", lambda *a: True)
        eager = {p: fresh_run(comp, p, steer, sampling) for p in PROMPTS}
    read_plainly = steered = written = 0
    lazy = []
    for prompt in PROMPTS:
        ids, stats, evaluated, plain = fresh_run(comp, prompt, steer, sampling)
        assert ids == eager[prompt][0]
        assert evaluated <= eager[prompt][2]  # reads plainly only where it could change the choice
        steered += stats.steered
        written += stats.eval_count
        read_plainly += plain
        lazy.append(evaluated)
    assert 0 < steered < written  # both members wrote
    assert read_plainly > 0  # the plain reading did run
    assert sum(e[2] for e in eager.values()) > sum(lazy)  # and was skipped where it could not matter


def test_plain_one_is_the_styled_reading_alone(comp):
    """beta = 1 leaves only the styled reading's top token plausible: plain changes nothing (greedy)."""
    without = {**RECOMMENDED.to_dict(), "mode": "nudge", "plain": None}
    for prompt in PROMPTS:
        assert (
            run(comp, prompt, {**without, "plain": 1.0}, GREEDY)[0] == run(comp, prompt, without, GREEDY)[0]
        )


def test_plain_needs_a_composite_loaded_with_the_second_sequence(tiny):
    c = Composite.load(recipe_over(tiny, adapter=True), n_parallel=1)
    try:
        assert c.members["large"].n_seq == 1
        with pytest.raises(InvalidRequest, match="loaded without"):
            run(c, "Hi", {"mode": "recommended", "plain": 0.3}, GREEDY)
        ids, stats = run(c, "Hi", "recommended", GREEDY)
        assert stats.steer_mode == "nudge" and ids
    finally:
        c.close()
    viewing = Composite.load(
        recipe_over(tiny, adapter=True, extra="steer: {mode: nudge, plain: 0.3}\n"), n_parallel=3
    )
    try:
        assert viewing.members["large"].n_seq == 6 and viewing.n_parallel == 3
    finally:
        viewing.close()


def test_a_second_reading_starts_from_the_first_ones_cache_bit_for_bit(comp):
    """Hold(like=...) copies the styled sequence's cache (the prompt) instead of evaluating it again."""
    large = comp.members["large"]
    prompt = comp.tokenize("Once upon a time, in a land far away, there lived", add_bos=True)
    reply = comp.tokenize(" a dragon.", add_bos=False)
    large.reset()
    styled = comp.n_parallel - 1  # the last slot, and its plain reading's sequence
    plain = styled + comp.n_parallel
    large.hold([Hold(styled, prompt + reply)])
    before = large.stats.evaluated
    seeded = large.hold([Hold(plain, prompt + reply[1:], 2, like=styled)])[0]
    assert large.stats.evaluated - before == len(reply) - 1  # the prompt came from the copy
    assert large.cached[plain] == prompt + reply[1:] and large.cached[styled] == prompt + reply
    large.reset()
    fresh = large.hold([Hold(plain, prompt + reply[1:], 2)])[0]
    assert np.array_equal(seeded, fresh)
    # a sequence already holding more of the tokens than the other is left as it is
    large.hold([Hold(styled, prompt[:3])])
    before = large.stats.evaluated
    large.hold([Hold(plain, prompt + reply[1:], 1, like=styled)])
    assert large.stats.evaluated == before + 1 and large.cached[styled] == prompt[:3]


def test_plain_zero_lets_the_plain_reading_alone_decide_in_one_sequence(comp, monkeypatch):
    """plain 0 keeps every token plausible: the same tokens as both readings with a vanishing beta
    (junctions aside: see the next test), while the large model keeps one sequence, which holds the
    plain reading."""
    monkeypatch.setattr("nanocommander.engine.decode.steering.respaced", lambda row, *a: row)
    ends = {comp.tokenize(s, add_bos=False)[0]: 4.0 for s in (".", "!", "\n")}
    sampling = merge_sampling({"temperature": 0, "repeat_penalty": 1.0, "logit_bias": ends})
    steer = {**RECOMMENDED.to_dict(), "mode": "nudge", "reject": 4.0}
    assert not parse_steer({**steer, "plain": 0}).views and parse_steer({**steer, "plain": 1e-30}).views
    left_out = 0
    for prompt in PROMPTS:
        both, *_ = fresh_run(comp, prompt, {**steer, "plain": 1e-30}, sampling)
        alone, stats, _, second = fresh_run(comp, prompt, {**steer, "plain": 0}, sampling)
        assert alone == both and second == 0
        held = max(comp.members["large"].cached[: comp.n_parallel], key=len)
        written = comp.tokenize(prompt, add_bos=True) + alone
        left_out += held != written[: len(held)]  # a finished sentence of the tuned model was left out
    assert left_out > 0


def test_at_a_junction_the_plain_readings_words_take_their_space():
    """After a left-out "... Bakery!" the plain reading starts a reply ("The") where the styled text
    goes on (" The"): its top words move to their spaced twins; punctuation and spaced ones stay."""
    pieces = {0: b"The", 1: b" The", 2: b",", 3: b"Mercury", 4: b"\n", 5: b"qz"}
    twins = {0: 1, 3: None, 5: None}  # "Mercury" and "qz" have no one-token spaced twin
    plain = probs(0.5, 0.01, 0.2, 0.1, 0.15, 0.005)
    out = respaced(plain, V, None, pieces.__getitem__, twins.get, top=5)
    assert out[1] == plain[0] and np.isinf(out[0])  # "The" -> " The", with the better of the two logits
    assert out[2] == plain[2] and out[4] == plain[4] and out[3] == plain[3]  # kept as they are
    assert np.isinf(out[5])  # beyond the top 5
