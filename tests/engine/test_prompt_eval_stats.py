"""Prompt-eval stats count the prompt tokens whichever members evaluated, not only the large one's."""

from __future__ import annotations

from nanocommander.engine.request.types import GenerateRequest


def final(composite, **kw):
    return list(composite.generate(GenerateRequest("The quick brown fox jumps over", num_predict=1, **kw)))[
        -1
    ]


def test_small_members_evaluating_the_prompt_are_counted(composite):
    final(composite, member="large")  # the large member now holds the prompt; base and tuned do not
    stats = final(composite).stats
    assert stats.prompt_tokens > 2
    assert stats.prompt_eval_tokens == stats.prompt_tokens  # base and tuned evaluated all of it
    again = final(composite).stats
    assert again.prompt_eval_tokens == 1  # every member holds the prompt: only the last token re-runs
