"""The Name grammar: table tests, hostile inputs and a Hypothesis round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanocommander.errors import InvalidName
from nanocommander.registry import Name, Registry

VALID = [
    ("tiny", ("local", "library", "tiny", "latest"), "tiny:latest"),
    ("tiny:v2", ("local", "library", "tiny", "v2"), "tiny:v2"),
    ("me/tiny", ("local", "me", "tiny", "latest"), "me/tiny:latest"),
    ("me/tiny.q4:1.0", ("local", "me", "tiny.q4", "1.0"), "me/tiny.q4:1.0"),
    ("hf.co/user/repo", ("hf.co", "user", "repo", "latest"), "hf.co/user/repo:latest"),
    (
        "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M",
        ("hf.co", "bartowski", "Llama-3.2-1B-GGUF", "Q4_K_M"),
        "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M",
    ),
    ("huggingface.co/user/repo:x", ("hf.co", "user", "repo", "x"), "hf.co/user/repo:x"),
    ("https://hf.co/user/repo", ("hf.co", "user", "repo", "latest"), "hf.co/user/repo:latest"),
    ("localhost:8080/ns/m:t", ("localhost:8080", "ns", "m", "t"), "localhost:8080/ns/m:t"),
    ("_x", ("local", "library", "_x", "latest"), "_x:latest"),
    ("m" * 96, ("local", "library", "m" * 96, "latest"), "m" * 96 + ":latest"),
]

HOSTILE = [
    "",
    " ",
    "../x",
    "..",
    ".",
    "x/..",
    "a/../b",
    "/etc/passwd",
    "/abs",
    "a//b",
    "a/b/c/d",
    "x:",
    ":tag",
    "bad name",
    "x;rm -rf",
    "x\x00y",
    "x\ny",
    "ns.dot/x",
    "-x",
    ".hidden",
    "x:../y",
    "x:a:b",
    "m" * 97,
    "a" * 700,
    "hf.co/../x",
    "héllo",
    "x/y/",
    "C:\\x",
    "~/x",
    "$HOME",
]


@pytest.mark.parametrize(("text", "parts", "shown"), VALID)
def test_valid_names_parse_and_display_shortest(text, parts, shown):
    name = Name.parse(text)
    assert name.parts() == parts
    assert name.display() == shown
    assert Name.parse(shown) == name


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_names_are_refused(text):
    with pytest.raises(InvalidName) as err:
        Name.parse(text)
    assert "invalid model name" in str(err.value)


def test_lookup_is_case_insensitive():
    assert Name.parse("Tiny:Latest") == Name.parse("tiny")
    assert hash(Name.parse("HF.CO/User/Repo:Q4")) == hash(Name.parse("hf.co/user/repo:q4"))
    assert Name.parse("Tiny").display() == "Tiny:latest"  # casing is kept for display
    assert Name.parse("hf.co/u/r").is_hub and not Name.parse("u/r").is_hub


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_names_touch_nothing(text, isolated, tmp_path):
    reg = Registry()
    for call in (
        lambda: reg.copy(text, "ok"),
        lambda: reg.copy("ok", text),
        lambda: reg.delete(text),
        lambda: reg.show(text),
        lambda: reg.resolve(text),
        lambda: reg.create(text, text="x"),
        lambda: reg.push(text, "hf.co/a/b"),
    ):
        with pytest.raises(InvalidName):
            call()
    assert not isolated.exists()  # the store was not even created


PART = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,20}", fullmatch=True)
DOTTED = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(ns=PART, model=DOTTED, tag=DOTTED)
def test_round_trip_and_safe_paths(ns, model, tag):
    name = Name.parse(f"{ns}/{model}:{tag}")
    assert Name.parse(name.display()) == name
    for part in name.path().parts:
        assert part not in (".", "..") and "/" not in part and not part.startswith(".")


@given(st.text(max_size=120))
def test_any_text_parses_to_a_safe_path_or_is_refused(text):
    try:
        name = Name.parse(text)
    except InvalidName:
        return
    assert len(name.path().parts) == 4
    assert all(p not in (".", "..") and "/" not in p and "\\" not in p for p in name.path().parts)
