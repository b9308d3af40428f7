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
