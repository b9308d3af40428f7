"""Tool-call syntax: detection from chat templates, the incremental parser, and the forcing grammar."""

from __future__ import annotations

import dataclasses
import json

import pytest
import tool_families as tf
from engine_helpers import GREEDY

from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.engine.text import toolcalls as tc
from nanocommander.errors import InvalidRequest

CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
def test_detect_each_family_from_its_template(family):
    assert tc.detect(tf.TEMPLATES[family]) == family


def test_detect_unknown_and_override():
    import tiny_models

    assert tc.detect(tiny_models.CHATML_TEMPLATE) is None and tc.detect(None) is None
    assert tc.family(tiny_models.CHATML_TEMPLATE, "mistral").name == "mistral"


def parse_all_splits(family: str, text: str, names: frozenset[str] | None = None) -> set[tuple[str, str]]:
    """Parse `text` fed whole, char by char and split at every point; return the distinct results."""
    fam = tc.BARE if family == "json" else tc.FAMILIES[family]
    feeds = [[text], list(text)] + [[text[:i], text[i:]] for i in range(1, len(text))]
    results = set()
    for feed in feeds:
        parser = tc.ToolCallParser(fam, names)
        content = "".join(parser.push(piece)[0] for piece in feed)
        content += parser.finish()[0]
        calls = json.dumps([[c.name, c.arguments] for c in parser.calls])
        results.add((content, calls))
    return results


def calls_json(*calls: dict) -> str:
    return json.dumps([[c["name"], c["arguments"]] for c in calls])


TIME = {"name": "get_time", "arguments": {"zone": "UTC"}}
CASES = [
    # (family, model output, content, calls)
    ("hermes", "Just text, no tools.", "Just text, no tools.", ()),
    ("hermes", f"<tool_call>\n{json.dumps(CALL)}\n</tool_call>", "", (CALL,)),
    ("hermes", f"Let me check.\n<tool_call>\n{json.dumps(CALL)}\n</tool_call>", "Let me check.\n", (CALL,)),
    (
        "hermes",
        f"<tool_call>\n{json.dumps(CALL)}\n</tool_call>\n<tool_call>\n{json.dumps(TIME)}\n</tool_call>",
        "\n",
        (CALL, TIME),
    ),
    ("hermes", "<tool_call>\nnot json\n</tool_call>", "<tool_call>\nnot json\n</tool_call>", ()),
    ("hermes", "a < b and <tool", "a < b and <tool", ()),
    ("hermes", f"<tool_call>\n{json.dumps(CALL)}", "", (CALL,)),  # stopped before the closing tag
    ("llama3", json.dumps({"name": "get_weather", "parameters": {"city": "Paris"}}), "", (CALL,)),
    (
        "llama3",
        "<|python_tag|>" + json.dumps({"name": "get_weather", "parameters": {"city": "Paris"}}),
        "",
        (CALL,),
    ),
    (
        "llama3",
        "  " + json.dumps({"name": "get_weather", "parameters": {"city": "Paris"}}) + " ",
        "",
        (CALL,),
    ),
    ("llama3", "The weather is fine.", "The weather is fine.", ()),
    ("llama3", '{"answer": 42}', '{"answer": 42}', ()),  # JSON that is not a call stays content
    ("mistral", "[TOOL_CALLS]" + json.dumps([CALL, TIME]), "", (CALL, TIME)),
    ("mistral", json.dumps([CALL]), "", (CALL,)),  # the control token was not rendered
    ("mistral", 'Sure. [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', "Sure. ", (CALL,)),
    ("mistral", "[TOOL_CALLS]oops", "[TOOL_CALLS]oops", ()),
    ("mistral", "[1, 2] is a list", "[1, 2] is a list", ()),
]


@pytest.mark.parametrize("family,text,content,calls", CASES)
def test_parser_gives_the_same_split_however_the_text_is_streamed(family, text, content, calls):
    assert parse_all_splits(family, text) == {(content, calls_json(*calls))}


OFFERED = frozenset({"get_weather", "get_time"})
BARE_CALL = json.dumps(CALL)
BARE_CASES = [
    # (model output, content, calls): what a model writes without its family's markers
    (BARE_CALL, "", (CALL,)),
    ("\n  " + BARE_CALL + "\n", "", (CALL,)),
    (json.dumps({"name": "get_weather", "parameters": {"city": "Paris"}}), "", (CALL,)),
    (json.dumps([CALL, TIME]), "", (CALL, TIME)),
    (BARE_CALL + "\n" + json.dumps(TIME), "", (CALL, TIME)),
    ("```json\n" + BARE_CALL + "\n```", "", (CALL,)),
    ("```\n" + BARE_CALL + "\n```\n", "", (CALL,)),
    # stays content: a name that was not offered, JSON that is no call, text around a call, code
    (json.dumps({"name": "launch", "arguments": {}}), json.dumps({"name": "launch", "arguments": {}}), ()),
    ('{"name": "get_weather"}', '{"name": "get_weather"}', ()),  # no arguments: a record, not a call
    ('{"answer": 42}', '{"answer": 42}', ()),
    ('{"answer": "a } in a string"} and more', '{"answer": "a } in a string"} and more', ()),
    (BARE_CALL + " should work.", BARE_CALL + " should work.", ()),
    ("```python\nprint(1)\n```", "```python\nprint(1)\n```", ()),
    ("[1, 2] is a list", "[1, 2] is a list", ()),
    ("Here: " + BARE_CALL, "Here: " + BARE_CALL, ()),  # only a reply that *is* JSON calls
]


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral", "json"])
@pytest.mark.parametrize("text,content,calls", BARE_CASES)
def test_bare_json_calls_parse_only_for_offered_names(family, text, content, calls):
    assert parse_all_splits(family, text, OFFERED) == {(content, calls_json(*calls))}


def test_bare_json_content_streams_once_it_cannot_be_a_call():
    parser = tc.ToolCallParser(tc.FAMILIES["hermes"], OFFERED)
    assert parser.push('{"answer": ') == ("", [])  # could still be a call: held
    assert parser.push("42}") == ('{"answer": 42}', [])  # closed, and no call: given back at once
    assert parser.push(" more") == (" more", [])
    fenced = tc.ToolCallParser(tc.BARE, OFFERED)
    assert fenced.push("```py") == ("", [])
    assert fenced.push("thon\nx = 1\n") == ("```python\nx = 1\n", [])
    held = tc.ToolCallParser(tc.FAMILIES["hermes"], OFFERED)
    assert held.push(BARE_CALL) == ("", [])  # a whole call: held to the end (more may follow)
    content, calls = held.finish()
    assert content == "" and [c.name for c in calls] == ["get_weather"] and calls[0].id.startswith("call_")


def test_parser_streams_content_before_a_call_and_each_call_when_it_closes():
    parser = tc.ToolCallParser(tc.FAMILIES["hermes"])
    assert parser.push("Checking the weather") == ("Checking the weather", [])
    assert parser.push(" now <tool") == (" now ", [])  # a possible marker is held back
    assert parser.push("_call>\n" + json.dumps(CALL)) == ("", [])
    content, calls = parser.push("\n</tool_call>")
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0].id.startswith("call_")


def test_mistral_ids_are_nine_alphanumerics_and_given_ids_are_kept():
    parser = tc.ToolCallParser(tc.FAMILIES["mistral"])
    parser.push("[TOOL_CALLS]" + json.dumps([CALL, {**TIME, "id": "abcDEF123"}]))
    parser.finish()
    first, second = parser.calls
    assert len(first.id) == 9 and first.id.isalnum() and second.id == "abcDEF123"


def test_tool_choice_is_validated():
    assert tc.choice(None, tf.TOOLS) is None and tc.choice("auto", tf.TOOLS) is None
    assert tc.choice("required", tf.TOOLS) == "required"
    assert tc.choice({"type": "function", "function": {"name": "get_time"}}, tf.TOOLS) == "get_time"
    for bad in ("always", {"type": "function", "function": {"name": "nope"}}, {"function": 3}):
        with pytest.raises(InvalidRequest):
            tc.choice(bad, tf.TOOLS)
    with pytest.raises(InvalidRequest):
        tc.choice("required", None)


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
def test_forced_grammar_makes_a_random_model_write_a_parseable_call(family, tmp_path_factory):
    models = tf.write_models(tmp_path_factory.mktemp("tool-models"))
    comp = Composite.load(Recipe.parse(tf.recipe_text(models, family), check_files=True))
    try:
        fam = tc.family(comp.template.source)
        assert fam is not None and fam.name == family
        prompt = comp.chat_prompt([{"role": "user", "content": "time?"}], tools=tf.TOOLS)
        grammar = tc.grammar(fam, tf.TOOLS, "get_time")
        if family == "mistral":  # make the model write the control token, as real Mistral models do
            (marker,) = comp.tokenize("[TOOL_CALLS]", add_bos=False)
            grammar = grammar.replace('"[TOOL_CALLS][', f'<[{marker}]> "[')
        sampling = dataclasses.replace(GREEDY, grammar=grammar)
        runs = {
            shown: "".join(
                c.text
                for c in comp.generate(
                    GenerateRequest(prompt, sampling=sampling, num_predict=80, special_text=shown)
                )
            )
            for shown in ((), fam.special_text)
        }
    finally:
        comp.close()
    parser = tc.ToolCallParser(fam)
    content = parser.push(runs[fam.special_text])[0] + parser.finish()[0]
    assert content == "" and [(c.name, c.arguments["zone"] in ("UTC", "CET")) for c in parser.calls] == [
        ("get_time", True)
    ]
    if family == "mistral":  # the marker is a control token: its text shows only when the request asks
        assert runs[fam.special_text] == "[TOOL_CALLS]" + runs[()]
