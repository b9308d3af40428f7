"""Tool calls over the wire: each template family, Ollama and OpenAI shapes, streamed and not.

The tiny models are random, so each request forces the family's syntax with `tool_choice`
(a grammar built from the tool's schema); the parser then has to find the call in what the
model wrote. The official clients parse the results.
"""

from __future__ import annotations

import json

import httpx
import ollama
import pytest
import tool_families as tf
from openai import BadRequestError, OpenAI

from nanocommander.engine.request.recipe import Recipe

FAMILIES = ("hermes", "llama3", "mistral")
NAMED = {"type": "function", "function": {"name": "get_time"}}
ASK = [{"role": "user", "content": "What time is it in UTC?"}]


@pytest.fixture(scope="module")
def live(start_server, tmp_path_factory):
    models = tf.write_models(tmp_path_factory.mktemp("tool-models"))
    recipes = [Recipe.parse(tf.recipe_text(models, f), check_files=True) for f in FAMILIES]
    recipes.append(  # a ChatML template names no tool syntax: the recipe's tool_parser does
        Recipe.parse(
            f"name: chatml-hermes\nmembers:\n  large: {{path: {models['large']}}}\n"
            f"  base: {{path: {models['base']}}}\n  tuned: {{path: {models['tuned']}}}\n"
            "tool_parser: hermes\nparameters: {temperature: 0, num_predict: 96}\n",
            check_files=True,
        )
    )
    recipes.append(  # a template with no tool syntax and no tool_parser: only bare JSON calls parse
        Recipe.parse(
            f"name: chatml-plain\nmembers:\n  large: {{path: {models['large']}}}\n"
            f"  base: {{path: {models['base']}}}\n  tuned: {{path: {models['tuned']}}}\n"
            "parameters: {temperature: 0, num_predict: 200}\n",
            check_files=True,
        )
    )
    return start_server(recipes, max_body=1 << 20, keep_alive=300, max_queue=16)


@pytest.fixture(scope="module")
def oa(live):
    return OpenAI(base_url=f"{live.url}/v1", api_key="unused")


def calls_of(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or ()]


@pytest.mark.parametrize("family", FAMILIES)
def test_openai_named_tool_choice_streamed_and_not(oa, family):
    kw = dict(model=f"tools-{family}", messages=ASK, tools=tf.TOOLS, tool_choice=NAMED, temperature=0)
    whole = oa.chat.completions.create(**kw)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    ((name, args),) = calls_of(choice.message)
    assert name == "get_time" and args["zone"] in ("UTC", "CET")
    assert choice.message.tool_calls[0].type == "function" and choice.message.tool_calls[0].id

    # streamed: the client's accumulation of delta.tool_calls gives the same call
    parts: dict[int, dict] = {}
    finish = None
    for chunk in oa.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or ():
                part = parts.setdefault(d.index, {"name": "", "arguments": ""})
                part["name"] += d.function.name or ""
                part["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls"
    assert [(p["name"], json.loads(p["arguments"])) for p in parts.values()] == [(name, args)]


@pytest.mark.parametrize("family", FAMILIES)
def test_ollama_shape_streamed_and_not(live, family):
    body = {
        "model": f"tools-{family}",
        "messages": ASK,
        "tools": tf.TOOLS,
        "tool_choice": "required",  # NanoCommander's extension: Ollama's API has no tool_choice
        "options": {"temperature": 0},
    }
    whole = httpx.post(f"{live.url}/api/chat", json={**body, "stream": False}, timeout=60).json()
    calls = whole["message"]["tool_calls"]
    assert calls and all(c["function"]["name"] in ("get_weather", "get_time") for c in calls)
    assert isinstance(calls[0]["function"]["arguments"], dict) and whole["message"]["content"] == ""
    assert whole["done_reason"] == "stop"
    lines = [
        json.loads(x) for x in httpx.post(f"{live.url}/api/chat", json=body, timeout=60).text.splitlines()
    ]
    streamed = [c for line in lines for c in line["message"].get("tool_calls", ())]
    assert [c["function"] for c in streamed] == [c["function"] for c in calls]
    assert "".join(line["message"]["content"] for line in lines) == ""


def test_official_openai_client_tools_round_trip(oa):
    """A call, the tool's result sent back through the template, then the model's answer."""
    first = oa.chat.completions.create(
        model="tools-hermes", messages=ASK, tools=tf.TOOLS, tool_choice="required", temperature=0
    )
    msg = first.choices[0].message
    assert msg.tool_calls and first.choices[0].finish_reason == "tool_calls"
    history = [*ASK, msg.model_dump(exclude_none=True)]
    history += [
        {"role": "tool", "tool_call_id": c.id, "content": '{"time": "12:00"}'} for c in msg.tool_calls
    ]
    second = oa.chat.completions.create(
        model="tools-hermes", messages=history, tools=tf.TOOLS, temperature=0, max_tokens=4
    )
    assert second.choices[0].finish_reason in ("stop", "length")
    # the call and its result were rendered: the prompt grew by at least the <tool_response> block
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + len('<tool_response>\n{"time": "12:00"}')


def test_official_ollama_client_parses_tool_calls(live):
    """`format` (a JSON schema) makes the Llama-3 family reply a call; ollama.chat(tools=...) gets it."""
    client = ollama.Client(host=live.url)
    schema = {
        "type": "object",
        "properties": {
            "name": {"const": "get_weather"},
            "parameters": tf.WEATHER["function"]["parameters"],
        },
        "required": ["name", "parameters"],
    }
    out = client.chat("tools-llama3", messages=ASK, tools=tf.TOOLS, format=schema, options={"temperature": 0})
    (call,) = out.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments["city"] in ("Paris", "Oslo")
    streamed = [
        c
        for part in client.chat(
            "tools-llama3",
            messages=ASK,
            tools=tf.TOOLS,
            format=schema,
            options={"temperature": 0},
            stream=True,
        )
        for c in part.message.tool_calls or ()
    ]
    assert [c.function for c in streamed] == [call.function]
    # the tool's answer goes back as role "tool" (Ollama's tool_name) and renders as an ipython turn
    history = [*ASK, out.message, {"role": "tool", "tool_name": "get_weather", "content": "sunny"}]
    again = client.chat("tools-llama3", messages=history, tools=tf.TOOLS, options={"num_predict": 2})
    assert again.prompt_eval_count > out.prompt_eval_count


def test_recipe_tool_parser_names_the_syntax_when_the_template_does_not(oa):
    out = oa.chat.completions.create(
        model="chatml-hermes", messages=ASK, tools=tf.TOOLS, tool_choice=NAMED, temperature=0
    )
    assert calls_of(out.choices[0].message)[0][0] == "get_time"


def test_free_text_with_tools_offered_stays_content(oa):
    out = oa.chat.completions.create(
        model="tools-hermes", messages=ASK, tools=tf.TOOLS, temperature=0, max_tokens=8
    )
    assert out.choices[0].message.tool_calls is None and out.choices[0].finish_reason in ("stop", "length")


def test_bad_tool_choice_is_a_clear_400(oa, live):
    with pytest.raises(BadRequestError, match="not in"):
        oa.chat.completions.create(
            model="tools-hermes",
            messages=ASK,
            tools=tf.TOOLS,
            tool_choice={"type": "function", "function": {"name": "launch"}},
        )
    r = httpx.post(
        f"{live.url}/api/chat",
        json={"model": "tools-hermes", "messages": ASK, "tools": tf.TOOLS, "tool_choice": "always"},
    )
    assert r.status_code == 400 and "tool_choice" in r.json()["error"]


# A scripted reply: a JSON schema of constants makes the random model write exactly one bare call,
# `{"name": "get_weather", "arguments": {"city": "Paris"}}` (whitespace aside), with no markers.
SCRIPTED = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {
            "type": "object",
            "properties": {"city": {"const": "Paris"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}
BARE_MODELS = ("tools-hermes", "tools-mistral", "chatml-plain")


def _openai_bare(oa, model: str, offered, stream: bool):
    kw = dict(
        model=model,
        messages=ASK,
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "call", "schema": SCRIPTED}},
    )
    if offered is not None:
        kw["tools"] = offered
    if not stream:
        choice = oa.chat.completions.create(**kw).choices[0]
        return choice.message.content or "", calls_of(choice.message), choice.finish_reason
    content, parts, finish = "", {}, None
    for chunk in oa.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            content += c.delta.content or ""
            for d in c.delta.tool_calls or ():
                part = parts.setdefault(d.index, {"name": "", "arguments": ""})
                part["name"] += d.function.name or ""
                part["arguments"] += d.function.arguments or ""
    return content, [(p["name"], json.loads(p["arguments"])) for p in parts.values()], finish


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", BARE_MODELS)
def test_openai_bare_json_call_parses_for_an_offered_name(oa, model, stream):
    content, calls, finish = _openai_bare(oa, model, tf.TOOLS, stream)
    assert calls == [("get_weather", {"city": "Paris"})] and content == "" and finish == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_bare_json_stays_content_unless_the_name_was_offered(oa, stream):
    content, calls, finish = _openai_bare(oa, "tools-hermes", [tf.CLOCK], stream)  # get_weather not offered
    assert calls == [] and finish == "stop" and json.loads(content)["name"] == "get_weather"
    content, calls, finish = _openai_bare(oa, "chatml-plain", None, stream)  # no tools at all
    assert calls == [] and finish == "stop" and json.loads(content)["arguments"] == {"city": "Paris"}


def _ollama_bare(live, model: str, offered, stream: bool) -> tuple[str, list]:
    body = {"model": model, "messages": ASK, "format": SCRIPTED, "stream": stream}
    if offered is not None:
        body["tools"] = offered
    r = httpx.post(f"{live.url}/api/chat", json=body, timeout=60)
    assert r.status_code == 200, r.text
    lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
    content = "".join(line["message"]["content"] for line in lines)
    calls = [c["function"] for line in lines for c in line["message"].get("tool_calls", ())]
    return content, calls


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", BARE_MODELS)
def test_ollama_bare_json_call_parses_for_an_offered_name(live, model, stream):
    content, calls = _ollama_bare(live, model, tf.TOOLS, stream)
    assert content == "" and [(c["name"], c["arguments"]) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_bare_json_stays_content_unless_the_name_was_offered(live, stream):
    content, calls = _ollama_bare(live, "tools-mistral", [tf.CLOCK], stream)
    assert calls == [] and json.loads(content)["name"] == "get_weather"
    content, calls = _ollama_bare(live, "chatml-plain", None, stream)
    assert calls == [] and json.loads(content)["name"] == "get_weather"
