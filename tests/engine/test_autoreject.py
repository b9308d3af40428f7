"""`reject: auto` (the recommended rule's default): the threshold is measured on each adapter."""

from __future__ import annotations

import pytest
import tiny_models
from engine_helpers import GREEDY, recipe_over

from nanocommander.engine.request.decode_options import AUTO, OFF, RECOMMENDED, parse_steer
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime import autoreject
from nanocommander.engine.runtime.composite import Composite
from nanocommander.errors import InvalidRequest


def ask(comp, steer="recommended", prompt="Once upon a time"):
    req = GenerateRequest(
        prompt=prompt, steer=parse_steer(steer), sampling=GREEDY, num_predict=12, speculative=OFF
    )
    return list(comp.generate(req))


def test_threshold_is_a_clipped_quantile_of_the_margins():
    assert autoreject.threshold([2.0, 3.0, 4.0, 5.0, 6.0]).reject == pytest.approx(3.0)
    assert autoreject.threshold([0.1, 0.2, 0.3]).reject == autoreject.FLOOR
    assert autoreject.threshold([20.0, 30.0]).reject == autoreject.CEILING
    none = autoreject.threshold([])
    assert none.reject == autoreject.CEILING and none.margins == 0 and none.raw is None


def test_recommended_means_auto_and_auto_parses():
    assert RECOMMENDED.reject == AUTO and parse_steer({"mode": "nudge", "reject": "auto"}).reject == AUTO
    with pytest.raises(InvalidRequest, match='finite number or "auto"'):
        parse_steer({"mode": "nudge", "reject": "automatic"})


def test_measured_once_per_composite_at_the_first_request_that_needs_it(tiny):
    comp = Composite.load(recipe_over(tiny, adapter=True))
    try:
        ask(comp, {"mode": "nudge", "reject": 3.0, "sentences": True})
        assert comp.auto_reject.measured is None  # a number needs no measurement
        ask(comp)
        measured = comp.auto_reject.measured
        assert measured is not None and autoreject.FLOOR <= measured.reject <= autoreject.CEILING
        assert comp.info()["auto_reject"]["reject"] == pytest.approx(measured.reject, abs=1e-3)
        tuned = comp.members["tuned"]
        before = tuned.stats.evaluated
        ask(comp, prompt="Hello there")
        again = tuned.stats.evaluated - before
        before = tuned.stats.evaluated
        ask(comp, prompt="Hello there")
        assert tuned.stats.evaluated - before <= again  # no second measurement
        assert comp.auto_reject.measured is measured
    finally:
        comp.close()


def test_a_stronger_adapter_gets_a_higher_threshold(tiny, tmp_path):
    """large = base, so the tuned model disagrees only where its LoRA moved it: a gentle adapter
    (small weights) disagrees by less than a strong one, and the threshold follows."""
    raw = {}
    for name, std in (("gentle", 0.15), ("strong", 0.6)):
        lora = tiny_models.write_lora(tmp_path / f"{name}.gguf", seed=11, std=std)
        text = (
            f"name: {name}\nmembers:\n  large: {{path: {tiny['base']}}}\n  base: {{path: {tiny['base']}}}\n"
            f"  tuned: {{adapter: {lora}}}\nalpha: 1.0\n"
        )
        comp = Composite.load(Recipe.parse(text, check_files=True))
        try:
            m = autoreject.measure(comp)
        finally:
            comp.close()
        assert m.margins > 0, name
        raw[name] = m.raw
    assert raw["strong"] > 1.5 * raw["gentle"]


def test_each_composite_of_an_adapter_family_measures_its_own(tiny, tmp_path):
    """A family's composites share the large and base contexts but not a threshold; the probes run
    as scheduler jobs, so each request's slot holds that composite's adapter (was: a 500 from the
    server, 'no tuned context is bound to slot 0')."""
    from nanocommander.engine.runtime.family import Family
    from nanocommander.engine.runtime.pool import ModelPool

    recipes = []
    for name, std in (("gentle", 0.15), ("strong", 0.6)):
        lora = tiny_models.write_lora(tmp_path / f"{name}.gguf", seed=11, std=std, q8_a=True)
        recipes.append(
            Recipe.parse(
                f"name: {name}\nmembers:\n  large: {{path: {tiny['base']}}}\n  base: {{path: {tiny['base']}}}\n"
                f"  tuned: {{adapter: {lora}}}\nalpha: 1.0\nparameters: {{num_ctx: 512}}\n",
                check_files=True,
            )
        )
    family = Family.load(recipes[0], ModelPool(), capacity=2)
    views = [family.view(r) for r in recipes]
    try:
        for view in views:
            assert ask(view)[-1].done
        gentle, strong = (v.auto_reject.measured for v in views)
        assert gentle is not None and strong is not None and strong.raw > gentle.raw
    finally:
        for view in views:
            view.close()


def test_a_recipe_asking_for_auto_is_measured_at_load(tiny):
    """At load, on fresh caches: the threshold then depends on the recipe alone, not on the requests
    that came first; a recipe that does not ask for it measures nothing."""
    comp = Composite.load(recipe_over(tiny, adapter=True, extra="steer: recommended\n"))
    plain = Composite.load(recipe_over(tiny, adapter=True))
    try:
        assert comp.auto_reject.measured is not None and plain.auto_reject.measured is None
        again = Composite.load(recipe_over(tiny, adapter=True, extra="steer: recommended\n"))
        try:
            assert again.auto_reject.measured.reject == comp.auto_reject.measured.reject
        finally:
            again.close()
    finally:
        comp.close()
        plain.close()


def test_probes_that_cannot_run_fall_back_to_the_fixed_rule(tiny, monkeypatch):
    """A context too small for the probes is no reason to refuse the model: reject 6, as before."""
    from nanocommander.errors import ContextOverflow

    def overflow(comp):
        raise ContextOverflow(40, 24, 32)

    monkeypatch.setattr(autoreject, "measure", overflow)
    comp = Composite.load(recipe_over(tiny, adapter=True, extra="steer: recommended\n"))
    try:
        assert comp.auto_reject.measured == autoreject.Measured(autoreject.CEILING, 0)
        assert ask(comp)[-1].done
    finally:
        comp.close()
