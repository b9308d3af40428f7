"""The OpenAI-compatible API, driven by the official `openai` client."""

from __future__ import annotations

import pytest
from openai import NotFoundError, OpenAI


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused")


def test_chat_completion_streaming_and_not(client):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "hello"}], temperature=0, max_tokens=10)
    whole = client.chat.completions.create(**kw)
    text = whole.choices[0].message.content
    assert whole.usage.completion_tokens <= 10 and whole.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )
    assert any(c.choices and c.choices[0].finish_reason in ("stop", "length") for c in chunks)


def test_alpha_as_a_top_level_field(client):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "hey"}], temperature=0, max_tokens=10)
    zero = client.chat.completions.create(**kw, extra_body={"alpha": 0})
    large = client.chat.completions.create(**kw, extra_body={"member": "large"})
    assert zero.choices[0].message.content == large.choices[0].message.content


def test_completions(client):
    out = client.completions.create(model="tiny", prompt="once upon", max_tokens=8, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny", prompt="once upon", max_tokens=8, temperature=0, stream=True
        )
    )
    assert streamed == out.choices[0].text


def test_models_list_and_retrieve(client):
    ids = {m.id for m in client.models.list().data}
    assert "tiny:latest" in ids
    model = client.models.retrieve("tiny")
    assert model.id == "tiny:latest"
    assert set(model.model_extra["composite"]["members"]) == {"large", "base", "tuned"}
    with pytest.raises(NotFoundError):
        client.models.retrieve("missing")


def test_response_format_json_schema(client):
    import json

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    out = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "a number"}],
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "num", "schema": schema}},
    )
    assert out.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(out.choices[0].message.content)["n"], int)


def test_completions_stream_with_usage_and_max_completion_tokens(client):
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="once",
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 5 and not chunks[-1].choices
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=3,
        temperature=1.0,
        seed=3,
    )
    assert chat.usage.completion_tokens <= 3


def test_temperature_defaults_to_one_not_the_recipe_value(client):
    # tiny-tools sets temperature 0 in its recipe; OpenAI's default (1.0) applies when the body has none
    kw = dict(model="tiny-tools", messages=[{"role": "user", "content": "go"}], max_tokens=12)
    outs = {client.chat.completions.create(**kw, seed=s).choices[0].message.content for s in range(4)}
    assert len(outs) > 1
    greedy = {
        client.chat.completions.create(**kw, temperature=0, seed=s).choices[0].message.content
        for s in range(3)
    }
    assert len(greedy) == 1


def test_tool_calls_history_and_tools_render(client):
    tools = [
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
    ]
    messages = [
        {"role": "developer", "content": "use tools"},
        {"role": "user", "content": "1+1"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
    ]
    without = client.chat.completions.create(model="tiny-tools", messages=messages, max_tokens=1)
    with_tools = client.chat.completions.create(
        model="tiny-tools", messages=messages, tools=tools, max_tokens=1
    )
    assert with_tools.usage.prompt_tokens > without.usage.prompt_tokens


def test_models_carry_the_composite(client):
    items = {m.id: m for m in client.models.list().data}
    composite = items["tiny-tools:latest"].model_extra["composite"]
    assert composite["alpha"] == 0.5 and set(composite["members"]) == {"large", "base", "tuned"}
    assert composite["members"]["large"]["architecture"] == "llama"
