"""The sweep's pieces that need no model: the shipped questions, answer matching, the marking rule."""

from __future__ import annotations

import pytest

from nanocommander.tune.errors import DataError
from nanocommander.tune.sweep import BUILTIN, Setting, correct, load_general, mark


def test_shipped_general_questions():
    items = load_general(BUILTIN)
    assert len(items) == 100 and len({q for q, _ in items}) == 100
    assert all(q.endswith("?") and answers for q, answers in items)
    assert "CC0" in BUILTIN.read_text(encoding="utf-8").splitlines()[0]


def test_answers_match_as_normalised_words():
    assert correct("The capital is Brasília.", ["Brasilia"])
    assert correct("It is CANBERRA!", ["Canberra"])
    assert not correct("Sydney, not Canberra's rival", ["Canber"])
    assert correct("about 300,000 km/s", ["300,000"])


def test_bad_question_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"q": 1}\n')
    with pytest.raises(DataError, match="q.jsonl:1"):
        load_general(bad)


def test_marking_rule():
    large = Setting("large", "large", nll=30.0, tokens=10, correct=80, asked=100)
    tuned = Setting("tuned", "tuned", nll=10.0, tokens=10, correct=40, asked=100)
    good = Setting("a", nll=10.9, tokens=10, correct=77, asked=100)
    styleless = Setting("b", nll=11.2, tokens=10, correct=80, asked=100)
    forgetful = Setting("c", nll=10.0, tokens=10, correct=75, asked=100)
    mark([large, tuned, good, styleless, forgetful])
    assert [s.marked for s in (large, tuned, good, styleless, forgetful)] == [
        False,
        False,
        True,
        False,
        False,
    ]
