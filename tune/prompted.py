"""`eval --prompt-baseline`: the large model alone with a style instruction as its system prompt.

Why: the composite has to beat the obvious alternative, simply asking the large model for the
style ("Talk like a pirate"). This row is scored like every other one (the general questions,
the style markers and measure, the held-out style data teacher-forced), so a user sees whether
the adapter buys anything over prompting.
"""

from __future__ import annotations

from dataclasses import replace

from nanocommander.engine.request.recipe import Recipe
from nanocommander.tune.data import Example
from nanocommander.tune.errors import DataError

LABEL = "large + style instruction"
FROM_RECIPE = "recipe"  # `--prompt-baseline` alone or `--prompt-baseline recipe`: the recipe's system prompt


def instruction(recipe: Recipe, value: str) -> str:
    """The instruction text: `value` itself, or the recipe's `system:` prompt for FROM_RECIPE."""
    text = (recipe.system or "") if value == FROM_RECIPE else value
    if not text.strip():
        raise DataError(
            "--prompt-baseline: the recipe has no `system:` prompt; give the instruction itself, "
            'e.g. --prompt-baseline "Talk like a pirate"'
            if value == FROM_RECIPE
            else "--prompt-baseline: the instruction is empty"
        )
    return text


def with_instruction(examples: list[Example], text: str) -> tuple[list[Example], int]:
    """The chat examples with `text` as their system prompt (put before a system prompt they have),
    and how many raw-text examples were left out (they have no system turn to put it in)."""
    out = []
    for ex in examples:
        if ex.text is not None:
            continue
        msgs = list(ex.messages)
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {**msgs[0], "content": f"{text}\n\n{msgs[0]['content']}"}
        else:
            msgs.insert(0, {"role": "system", "content": text, "weight": 0})
        out.append(replace(ex, messages=tuple(msgs)))
    return out, len(examples) - len(out)
