"""Engine test helpers: recipes over the tiny models, greedy settings, text of a run."""

from __future__ import annotations

from helpers import recipe_yaml

from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite

GREEDY = merge_sampling({"temperature": 0, "repeat_penalty": 1.0})


def recipe_over(tiny, *, large="large", base="base", tuned="tuned", adapter=False, alpha=1.0, extra=""):
    text = recipe_yaml(
        tiny, "t", large=large, base=base, tuned=tuned, adapter=adapter, alpha=alpha, extra=extra
    )
    return Recipe.parse(text, check_files=True)


def run_text(comp: Composite, prompt, **kw) -> str:
    kw.setdefault("sampling", GREEDY)
    kw.setdefault("num_predict", 24)
    return "".join(c.text for c in comp.generate(GenerateRequest(prompt=prompt, **kw)))
