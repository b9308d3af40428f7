"""Recipe keys `steer:` and `speculative:`: parsed by the engine's one parser, errors with file:line."""

from __future__ import annotations

import pytest

from nanocommander.engine.request.decode_options import RECOMMENDED, Speculation, Steer
from nanocommander.engine.request.recipe import Recipe
from nanocommander.errors import RecipeError

HEAD = "name: x\nmembers:\n  large: a.gguf\n  base: b.gguf\n  tuned: {adapter: c.gguf}\n"


def test_steer_and_speculative_round_trip():
    r = Recipe.parse(
        HEAD + "steer: {mode: gated, top1: 0.4, opening: 6}\nspeculative: {draft: lookup, max: 3}\n"
    )
    assert r.steer == Steer(mode="gated", top1=0.4, opening=6)
    assert r.speculative == Speculation(draft="lookup", max=3)
    again = Recipe.parse(r.dump())
    assert (again.steer, again.speculative) == (r.steer, r.speculative)
    assert Recipe.parse(HEAD + "steer: recommended\nspeculative: false\n").steer == RECOMMENDED
    assert Recipe.parse(HEAD).steer is None and Recipe.parse(HEAD).speculative is None


@pytest.mark.parametrize(
    "line,words",
    [
        ("steer: {mode: gated, beta: 0.1}", "not a parameter"),
        ("steer: warp", "steer must be one of"),
        ("speculative: {draft: large}", "speculative.draft"),
        ("speculative: {max: -1}", "speculative.max"),
    ],
)
def test_bad_values_name_the_line(line, words):
    with pytest.raises(RecipeError, match=words) as err:
        Recipe.parse(HEAD + line + "\n", file="r.yaml")
    assert "r.yaml:6" in str(err.value)
