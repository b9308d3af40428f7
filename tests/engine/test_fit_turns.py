"""fit_turns: the incremental turn dropping gives what dropping one turn at a time gives, with few renders."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nanocommander.engine.text.chat_template import ChatTemplate, drop_starts, fit_turns

TEMPLATE = ChatTemplate(None)  # ChatML


def byte_tokens(text: str) -> list[int]:
    return [1, *text.encode()]  # BOS, then one token per byte


def naive(head, turns, budget):
    """The old policy: render and tokenize once per dropped turn."""
    turns = list(turns)
    while True:
        text = TEMPLATE.render(head + turns)
        n = len(byte_tokens(text))
        if n < budget or len(turns) <= 1:
            return text
        turns = turns[1:]
        while turns and turns[0]["role"] != "user" and len(turns) > 1:
            turns = turns[1:]


turn = st.builds(
    lambda role, n: {"role": role, "content": "w" * n},
    st.sampled_from(["user", "assistant", "tool"]),
    st.integers(0, 120),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(turn, min_size=1, max_size=30), st.integers(1, 2000), st.booleans())
def test_same_text_as_dropping_one_turn_at_a_time(turns, budget, system):
    head = [{"role": "system", "content": "S" * 30}] if system else []
    renders = []

    def render(msgs):
        renders.append(len(msgs))
        return TEMPLATE.render(msgs)

    text, ids, start = fit_turns(render, byte_tokens, head, turns, budget)
    assert text == naive(head, turns, budget)
    assert ids == byte_tokens(text)
    assert start in drop_starts(turns)
    assert len(renders) <= 4 or len(renders) <= len(drop_starts(turns))


def test_a_long_chat_is_not_rendered_once_per_dropped_turn():
    turns = [{"role": r, "content": "x" * 50} for _ in range(200) for r in ("user", "assistant")]
    turns.append({"role": "user", "content": "last"})
    renders = []

    def render(msgs):
        renders.append(len(msgs))
        return TEMPLATE.render(msgs)

    text, ids, start = fit_turns(render, byte_tokens, [], turns, 1000)
    assert len(ids) < 1000 and text.endswith("last<|im_end|>\n<|im_start|>assistant\n")
    assert start > 300  # most turns dropped...
    assert len(renders) <= 4  # ...with a handful of renders, not 300


def test_drop_starts_begin_at_user_turns_and_keep_the_newest():
    roles = ["user", "assistant", "tool", "user", "assistant"]
    assert drop_starts([{"role": r} for r in roles]) == [0, 3, 4]
    assert drop_starts([{"role": "assistant"}]) == [0]
