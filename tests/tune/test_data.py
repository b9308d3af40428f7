"""Data formats: detection, normalisation, role aliases, and bad lines reported by number."""

from __future__ import annotations

import pytest

from nanocommander.tune import data
from nanocommander.tune.errors import DataError

USER_ASSISTANT = [("user", "hi"), ("assistant", "hello")]


@pytest.mark.parametrize(
    ("row", "fmt", "roles"),
    [
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            "messages",
            USER_ASSISTANT,
        ),
        (
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            "sharegpt",
            USER_ASSISTANT,
        ),
        ({"instruction": "hi", "input": "", "output": "hello"}, "alpaca", USER_ASSISTANT),
        ({"prompt": "hi", "completion": "hello"}, "completion", USER_ASSISTANT),
    ],
)
def test_each_chat_format_is_detected_and_normalised(jsonl, row, fmt, roles):
    ds = data.load(jsonl([row, row]))
    assert ds.format == fmt
    assert len(ds.examples) == 2
    assert [(m["role"], m["content"]) for m in ds.examples[0].messages] == roles
    assert [m["weight"] for m in ds.examples[0].messages] == [0, 1]


def test_text_format(jsonl):
    ds = data.load(jsonl([{"text": "once upon a time"}]))
    assert ds.format == "text" and ds.examples[0].text == "once upon a time" and not ds.examples[0].messages


def test_sharegpt_role_aliases_and_system(jsonl):
    row = {
        "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "a"},
            {"from": "gpt", "value": "b"},
            {"from": "Human", "value": "c"},
            {"from": "GPT", "value": "d"},
        ]
    }
    (ex,) = data.load(jsonl([row])).examples
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["weight"] for m in ex.messages] == [0, 0, 1, 0, 1]  # multi-turn kept whole, all answers learned


def test_alpaca_input_and_system_join_the_prompt(jsonl):
    (ex,) = data.load(
        jsonl([{"instruction": "Translate", "input": "chat", "output": "cat", "system": "You translate."}])
    ).examples
    assert [(m["role"], m["content"]) for m in ex.messages] == [
        ("system", "You translate."),
        ("user", "Translate\n\nchat"),
        ("assistant", "cat"),
    ]


def test_message_weight_zero_is_not_learned(jsonl):
    row = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "bad", "weight": 0},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "good"},
        ]
    }
    (ex,) = data.load(jsonl([row])).examples
    assert [m["weight"] for m in ex.messages if m["role"] == "assistant"] == [0, 1]


def test_openai_content_parts_are_joined(jsonl):
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
        ]
    }
    assert data.load(jsonl([row])).examples[0].messages[0]["content"] == "ab"


def test_bad_lines_are_reported_by_number(jsonl):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    rows = [
        good,
        "{not json",
        good,
        "",
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        [1, 2],
        {"instruction": "i", "output": "o"},
        {"foo": 1},
    ]
    with pytest.raises(DataError) as err:
        data.load(jsonl(rows))
    msg = str(err.value)
    assert "6 bad record(s)" in msg
    for line, text in [
        (2, "invalid JSON"),
        (5, "messages[0]: unknown role 'wizard'"),
        (6, "no assistant message"),
        (7, "expected a JSON object"),
        (8, "looks like Alpaca"),
        (9, "cannot tell the format"),
    ]:
        assert f"data.jsonl:{line}: {text}" in msg, (line, msg)
    assert ":1:" not in msg and ":3:" not in msg


def test_skip_bad_keeps_the_good_lines(jsonl):
    good = {"prompt": "p", "completion": "c"}
    ds = data.load(jsonl([good, {"prompt": 3, "completion": "c"}, good]), skip_bad=True)
    assert len(ds.examples) == 2 and [line for line, _ in ds.bad] == [2]
    assert [ex.line for ex in ds.examples] == [1, 3]


def test_forced_format_and_errors(jsonl, tmp_path):
    rows = [{"text": "raw", "prompt": "p", "completion": "c"}]
    assert data.load(jsonl(rows), fmt="text").format == "text"
    assert data.load(jsonl(rows)).format == "completion"
    with pytest.raises(DataError, match="unknown format"):
        data.load(jsonl(rows), fmt="csv")
    with pytest.raises(DataError, match="not found"):
        data.load(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no usable records"):
        data.load(jsonl(["", "  "]))
