"""Adapter families in the engine: many composites over one large and base, adapters switched per request.

Every output of a family member is compared with the same request on a freshly loaded composite
of that recipe alone, greedy, token for token: no adapter and no KV cache may leak between members.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tiny_models
from engine_helpers import GREEDY

from nanocommander.engine.llama.member import Member
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.engine.runtime.family import Family, family_key
from nanocommander.engine.runtime.pool import ModelPool

PROMPTS = ["<|im_start|>user\nhello there", "<|im_start|>user\nhello there, how are", "tell me the news"]
N_STYLES = 4


@pytest.fixture(scope="module")
def styles(tiny, tmp_path_factory) -> list[Recipe]:
    """Four composites over the tiny large and base, each with its own LoRA (two alphas, one scale)."""
    folder = tmp_path_factory.mktemp("styles")
    out = []
    for i in range(N_STYLES):
        # Q8_0 lora_a: llama.cpp's kernels for it give the same logits whatever the batch holds
        lora = tiny_models.write_lora(folder / f"style{i}.gguf", seed=40 + i, std=1.0, q8_a=True)
        scale = ", adapter_scale: 0.7" if i == 3 else ""
        out.append(
            Recipe.parse(
                f"name: style{i}\nmembers:\n  large: {{path: {tiny['large']}}}\n  base: {{path: {tiny['base']}}}\n"
                f"  tuned: {{adapter: {lora}{scale}}}\nalpha: {1.0 + 0.5 * (i % 2)}\n"
                "parameters: {num_ctx: 512}\n",
                check_files=True,
            )
        )
    return out


def run(comp: Composite, prompt: str, member: str = "composite", n: int = 12) -> list[int]:
    req = GenerateRequest(prompt=prompt, sampling=GREEDY, num_predict=n, member=member)  # type: ignore[arg-type]
    return [t for c in comp.generate(req) for t in c.token_ids]


@pytest.fixture(scope="module")
def fresh(styles) -> dict[tuple[int, str, str], list[int]]:
    """Each style's output on each prompt from a composite loaded for that request alone."""
    out = {}
    for i, recipe in enumerate(styles):
        for prompt in PROMPTS:
            for member in ("composite", "tuned"):
                comp = Composite.load(recipe)
                try:
                    out[i, prompt, member] = run(comp, prompt, member)
                finally:
                    comp.close()
    return out


def load_family(styles, capacity: int, n_parallel: int | None = None) -> tuple[Family, list]:
    family = Family.load(styles[0], ModelPool(), capacity=capacity, n_parallel=n_parallel)
    return family, [family.view(r) for r in styles]


def test_members_of_a_family_share_a_key_and_others_do_not(styles, tiny):
    assert len({family_key(r) for r in styles}) == 1
    other_ctx = dataclasses.replace(styles[0], parameters={"num_ctx": 256})
    full_tuned = Recipe.parse(
        f"name: t\nmembers:\n  large: {tiny['large']}\n  base: {tiny['base']}\n  tuned: {tiny['tuned']}\n"
    )
    assert family_key(other_ctx) not in (None, family_key(styles[0]))
    assert family_key(full_tuned) is None


@pytest.mark.parametrize("capacity", [1, 2])
def test_interleaved_members_match_fresh_composites(styles, fresh, capacity):
    family, views = load_family(styles, capacity)
    try:
        order = [0, 1, 0, 2, 3, 1, 1, 3, 0, 2, 2, 1, 3, 0]
        for step, i in enumerate(order):
            prompt = PROMPTS[step % len(PROMPTS)]
            member = "tuned" if step % 3 == 2 else "composite"
            assert run(views[i], prompt, member) == fresh[i, prompt, member], (step, i, prompt, member)
        assert len(family.contexts) == capacity and family.stats.switches >= len(order) // 2
        assert family.bound == {}  # every generation gave its tuned context back
    finally:
        for view in views:
            view.close()
    assert family.closed


def test_a_switch_clears_the_tuned_kv_and_keeps_large_and_base(styles, fresh, monkeypatch):
    family, views = load_family(styles, capacity=1, n_parallel=1)  # one slot: every request in sequence 0
    large, base, tuned = (family.core.members[r] for r in ("large", "base", "tuned"))
    try:
        prompt = PROMPTS[0]
        assert run(views[0], prompt, "tuned") == fresh[0, prompt, "tuned"]
        run(views[0], prompt)
        before = {m.role: m.stats.evaluated for m in (large, base, tuned)}
        assert run(views[1], prompt) == fresh[1, prompt, "composite"]
        n_prompt = len(views[1].tokenize(prompt))
        evaluated = {m.role: m.stats.evaluated - before[m.role] for m in (large, base, tuned)}
        # large and base re-read only the last prompt token; the switched tuned context the whole prompt
        assert (
            evaluated["tuned"] - evaluated["large"] == n_prompt - 1 == evaluated["tuned"] - evaluated["base"]
        )

        # the same test fails when the KV cache survives the switch (as llama.cpp would leave it)
        monkeypatch.setattr(Member, "reset", lambda self, wipe=True: None)
        run(views[0], prompt, "tuned")
        leaked = run(views[2], prompt, "tuned")
        assert leaked != fresh[2, prompt, "tuned"]
    finally:
        monkeypatch.undo()
        for view in views:
            view.close()


def test_score_uses_the_members_own_adapter(styles):
    family, views = load_family(styles, capacity=1)
    try:
        ids = views[2].tokenize(PROMPTS[1])
        for i in (2, 0, 2):
            comp = Composite.load(styles[i])
            try:
                expected = comp.score(ids, 3)
            finally:
                comp.close()
            assert np.allclose(views[i].score(ids, 3), expected, atol=1e-4)
    finally:
        for view in views:
            view.close()


def test_busy_contexts_are_never_switched_and_extra_ones_go_when_idle(styles):
    family, views = load_family(styles, capacity=2)
    try:
        for seq in range(3):  # three requests in flight, three adapters: a third context is made
            family.bind(seq, views[seq].adapter)
        tuned = [family.tuned_for(seq) for seq in range(3)]
        assert len({id(m) for m in tuned}) == 3 and len(family.contexts) == 3
        assert [m.adapter_path for m in tuned] == [v.adapter[0] for v in views[:3]]
        family.bind(3, views[1].adapter)  # the same adapter shares its context
        assert family.tuned_for(3) is tuned[1]
        for seq in range(4):
            family.release(seq)
        assert len(family.contexts) == 2 and family.bound == {}
        info = views[0].info()
        assert info["family"]["members"] == ["style0", "style1", "style2", "style3"]
        assert info["members"]["tuned"]["adapter"].endswith("style0.gguf")
    finally:
        for view in views:
            view.close()


def test_concurrent_members_are_batched_and_match_fresh_composites(styles, fresh):
    family, views = load_family(styles, capacity=2)
    jobs = [(i % N_STYLES, PROMPTS[i % 3], "tuned" if i % 5 == 4 else "composite") for i in range(12)]
    try:
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda job: run(views[job[0]], job[1], job[2]), jobs))
        assert got == [fresh[job] for job in jobs]
        assert family.core.scheduler.widest > 1 and family.bound == {}
    finally:
        for view in views:
            view.close()


def test_the_last_member_to_close_closes_the_family(styles):
    pool = ModelPool()
    family = Family.load(styles[0], pool, capacity=2)
    views = [family.view(r) for r in styles[:2]]
    assert run(views[1], PROMPTS[0], n=2)
    views[0].close()
    assert not family.closed and run(views[1], PROMPTS[0], n=2)
    views[1].close()
    assert family.closed and pool.loaded() == []
    with pytest.raises(Exception, match="unloaded"):
        family.view(styles[2])


def test_only_recent_adapters_stay_loaded(styles, fresh):
    """llama.cpp grows every context's graph with each adapter its model holds: a family keeps the
    adapters of its tuned contexts and `capacity` more; the others load again when asked for."""
    family, views = load_family(styles, capacity=1)
    model = family.core.members["base"].model
    try:
        assert len(model.loaded_adapters()) == 2  # the tuned context's, and the last one viewed
        for step, i in enumerate([0, 1, 2, 3, 1, 0]):
            assert run(views[i], PROMPTS[step % 3]) == fresh[i, PROMPTS[step % 3], "composite"]
            assert views[i].adapter[0] in model.loaded_adapters() and len(model.loaded_adapters()) <= 2
    finally:
        for view in views:
            view.close()
    assert model.loaded_adapters() == []
