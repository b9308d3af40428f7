"""Speculative composite decoding: same greedy output, same sampling distribution, clean caches."""

from __future__ import annotations

import threading

import pytest
from engine_helpers import GREEDY, recipe_over

from nanocommander.engine.decode import speculative
from nanocommander.engine.request.decode_options import OFF, parse_speculative
from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.types import DoneReason, GenerateRequest
from nanocommander.engine.runtime.composite import Composite

PROMPTS = [
    "Hello there",
    "The quick brown fox",
    "abc abc abc abc abc",
    "Once upon a time, in a land",
    "héllo wörld — 日本語 ünïcode",
    "the the the the the the",
    "<|im_start|>user\nWrite code<|im_end|>\n<|im_start|>assistant\n",
    "1 2 3 4 5 6 7 8 9",
]
TUNED, LOOKUP = parse_speculative("tuned"), parse_speculative({"draft": "lookup", "max": 6})


@pytest.fixture(scope="module")
def comps(tiny):
    """Tuned as a LoRA adapter and as a full GGUF; a third whose tuned is the large model drafts well."""
    made = {
        "adapter": Composite.load(recipe_over(tiny, adapter=True)),
        "gguf": Composite.load(recipe_over(tiny)),
        "agree": Composite.load(recipe_over(tiny, tuned="large")),
    }
    yield made
    for comp in made.values():
        comp.close()


def run(comp, prompt, **kw):
    kw.setdefault("sampling", GREEDY)
    kw.setdefault("num_predict", 32)
    chunks = list(comp.generate(GenerateRequest(prompt=prompt, **kw)))
    ids = [t for c in chunks for t in c.token_ids]
    return "".join(c.text for c in chunks), ids, chunks[-1]


@pytest.mark.parametrize("which", ["adapter", "gguf", "agree"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_greedy_identical_with_and_without_speculation(comps, which, alpha, monkeypatch):
    monkeypatch.setattr(speculative, "P_MIN", 0.0)  # draft at every step: the most verification
    comp = comps[which]
    drafted = accepted = 0
    for prompt in PROMPTS:
        plain = run(comp, prompt, alpha=alpha, speculative=OFF)
        for spec in (TUNED, LOOKUP):
            got = run(comp, prompt, alpha=alpha, speculative=spec)
            assert got[:2] == plain[:2], (prompt, spec)
            assert got[2].done_reason == plain[2].done_reason
            drafted += got[2].stats.drafted
            accepted += got[2].stats.accepted
    assert drafted > accepted > 0  # both outcomes were exercised


@pytest.mark.parametrize(
    "options",
    [
        {"repeat_penalty": 1.3, "repeat_last_n": 16, "presence_penalty": 0.5},
        {"dry_multiplier": 0.8, "dry_allowed_length": 1},
        {"logit_bias": {101: 5.0, 32: -3.0}},
        {"grammar": 'root ::= [a-z ]+ "."'},
    ],
)
def test_greedy_identical_under_stateful_samplers(comps, options, monkeypatch):
    """Penalties, DRY and grammars run on the committed history at every verified position."""
    monkeypatch.setattr(speculative, "P_MIN", 0.0)
    sampling = merge_sampling({"temperature": 0, "repeat_penalty": 1.0, **options})
    comp = comps["agree"]
    for prompt in PROMPTS[:5]:
        plain = run(comp, prompt, sampling=sampling, speculative=OFF)
        for spec in (TUNED, LOOKUP):
            assert run(comp, prompt, sampling=sampling, speculative=spec)[:2] == plain[:2]


def test_stop_strings_and_lengths_at_draft_boundaries(comps, monkeypatch):
    monkeypatch.setattr(speculative, "P_MIN", 0.0)
    comp = comps["agree"]
    for prompt in PROMPTS:
        full, _, _ = run(comp, prompt, speculative=OFF, num_predict=40)
        stops = [full[i : i + 2] for i in (3, 9, 17) if len(full) > i + 2 and full[i : i + 2].strip()]
        for n in (1, 2, 5, 13):
            assert (
                run(comp, prompt, speculative=TUNED, num_predict=n)[:2]
                == run(comp, prompt, speculative=OFF, num_predict=n)[:2]
            )
        for stop in stops:
            plain = run(comp, prompt, speculative=OFF, num_predict=40, stop=(stop,))
            got = run(comp, prompt, speculative=TUNED, num_predict=40, stop=(stop,))
            assert got[0] == plain[0] and got[2].done_reason == DoneReason.STOP


def test_caches_hold_only_accepted_tokens_and_next_turn_matches_cold(comps, monkeypatch):
    monkeypatch.setattr(speculative, "P_MIN", 0.0)
    comp = comps["adapter"]
    prompt = comp.tokenize("Once upon a time, in a land")
    for m in comp.members.values():
        m.reset()
    text, ids, last = run(comp, prompt, speculative=TUNED, num_predict=40)
    assert last.stats.drafted > last.stats.accepted  # some drafts were rejected
    committed = prompt + ids
    for m in comp.members.values():
        held = max(m.cached, key=len)  # the slot the request ran in
        same = next(
            (i for i, (a, b) in enumerate(zip(held, committed, strict=False)) if a != b),
            min(len(held), len(committed)),
        )
        assert same >= len(committed) - 1, m.role  # every committed token but the newest is held
    turn2 = committed + comp.tokenize(" and then", add_bos=False)
    warm = run(comp, turn2, speculative=TUNED, num_predict=24)
    assert warm[2].stats.prompt_eval_tokens < len(turn2) // 2  # the prefix was reused
    for m in comp.members.values():
        m.reset()
    cold = run(comp, turn2, speculative=TUNED, num_predict=24)
    assert warm[:2] == cold[:2]
    assert warm[:2] == run(comp, turn2, speculative=OFF, num_predict=24)[:2]


def test_cancel_mid_draft_stops_within_a_step_and_model_stays_usable(comps, monkeypatch):
    monkeypatch.setattr(speculative, "P_MIN", 0.0)
    comp = comps["agree"]
    cancel = threading.Event()
    req = GenerateRequest(
        prompt="Once upon a time", sampling=GREEDY, num_predict=200, ignore_eos=True, speculative=TUNED
    )
    seen, after = 0, 0
    for chunk in comp.generate(req, cancel):
        if chunk.done:
            assert chunk.done_reason == DoneReason.CANCEL
            break
        seen += len(chunk.token_ids)
        if cancel.is_set():
            after += 1
        if seen >= 5:
            cancel.set()
    assert after == 0
    assert run(comp, "Hello there", speculative=TUNED)[:2] == run(comp, "Hello there", speculative=OFF)[:2]


def test_speculation_turns_itself_off_where_it_cannot_be_exact(comps):
    comp = comps["adapter"]
    for opts in ({"mirostat": 2}, {"xtc_probability": 0.5, "xtc_threshold": 0.05}):
        sampling = merge_sampling({"temperature": 0.8, "seed": 1, **opts})
        assert run(comp, "Hello", sampling=sampling, speculative=TUNED)[2].stats.speculative is None
    assert run(comp, "Hello", member="large", speculative=TUNED)[2].stats.speculative is None
    assert run(comp, "Hello", alpha=0.0, speculative=TUNED)[2].stats.speculative is None
    assert run(comp, "Hello", alpha=0.0, speculative=LOOKUP)[2].stats.speculative == "lookup"
    assert run(comp, "Hello", speculative=OFF)[2].stats.speculative is None


def test_lookup_drafts_follow_earlier_ngrams():
    lookup = speculative.Lookup()
    tokens = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3]
    assert lookup.draft(tokens, 3) == [4, 5, 9]
    assert lookup.draft(tokens + [7, 7], 3) == []
    assert lookup.draft(tokens + [7, 7, 1, 2, 3], 2) == [7, 7]  # the latest occurrence wins
