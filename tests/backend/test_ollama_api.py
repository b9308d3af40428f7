"""The Ollama API, driven by the official `ollama` Python client (its own response validation applies)."""

from __future__ import annotations

import re

import ollama
import pytest
import requests  # noqa: F401  (installed with huggingface_hub)

GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url)


def test_version_is_plain_numeric_as_open_webui_parses_it(server):
    import json
    import urllib.request

    version = json.load(urllib.request.urlopen(f"{server.url}/api/version"))["version"]
    assert tuple(map(int, re.sub(r"^v|-.*", "", version).split("."))) >= (0, 1, 0)
    assert urllib.request.urlopen(f"{server.url}/").read() == b"Ollama is running"


def test_list_and_show(client):
    names = {m.model for m in client.list().models}
    assert {"tiny:latest", "tiny-lora:latest"} <= names
    shown = client.show("tiny")
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert shown.details.family == "llama"


def test_show_tells_the_composite_members_and_alpha(server):
    import httpx

    body = httpx.post(f"{server.url}/api/show", json={"model": "tiny-lora"}).json()
    assert body["composite"]["alpha"] == 1.0
    assert set(body["composite"]["members"]) == {"large", "base", "tuned"}
    assert body["composite"]["members"]["tuned"]["adapter"].endswith("lora.gguf")
    memory = body["composite"]["memory"]  # the registry's estimate: weights + KV cache per member
    assert memory["total"] > 0 and set(memory["members"]) == {"large", "base", "tuned"}


def test_chat_streaming_and_not_agree_at_temperature_zero(client):
    messages = [{"role": "user", "content": "hello"}]
    whole = client.chat("tiny", messages=messages, options=GREEDY)
    assert whole.message.role == "assistant" and whole.done and whole.done_reason in ("stop", "length")
    assert whole.eval_count and whole.total_duration and whole.prompt_eval_count
    parts = list(client.chat("tiny", messages=messages, options=GREEDY, stream=True))
    assert all(p.message.role == "assistant" for p in parts)  # the final chunk too
    assert parts[-1].done and parts[-1].done_reason
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert (
        client.chat("tiny:latest", messages=messages, options=GREEDY).message.content == whole.message.content
    )


def test_generate_streaming_and_not(client):
    whole = client.generate("tiny", "once upon a time", options=GREEDY)
    assert whole.done and whole.response and whole.context
    streamed = "".join(
        p.response for p in client.generate("tiny", "once upon a time", options=GREEDY, stream=True)
    )
    assert streamed == whole.response
    raw = client.generate("tiny", "once upon a time", raw=True, options=GREEDY)
    assert raw.response != whole.response  # raw skips the chat template


def test_alpha_zero_through_the_api_is_the_large_model(client):
    messages = [{"role": "user", "content": "hi there"}]
    zero = client.chat("tiny", messages=messages, options={**GREEDY, "alpha": 0})
    large = client.chat("tiny", messages=messages, options={**GREEDY, "member": "large"})
    composite = client.chat("tiny", messages=messages, options=GREEDY)
    assert zero.message.content == large.message.content
    assert composite.message.content != large.message.content


def test_json_format_constrains_output(client):
    import json

    out = client.generate("tiny", "give json", format="json", options={"temperature": 0, "num_predict": 40})
    text = out.response.strip()
    assert text.startswith(("{", "["))
    if out.done_reason == "stop":
        json.loads(text)


def test_ps_then_unload_with_keep_alive_zero(client, server):
    import httpx

    client.generate("tiny", "warm up", options={"num_predict": 1})
    loaded = {m.model for m in client.ps().models}
    assert "tiny:latest" in loaded
    assert all(m.expires_at is not None for m in client.ps().models)
    r = httpx.post(
        f"{server.url}/api/generate", json={"model": "tiny", "keep_alive": 0, "prompt": "", "stream": False}
    )
    assert r.status_code == 200 and r.json()["done"] is True
    assert "tiny:latest" not in {m.model for m in client.ps().models}


def test_unknown_model_is_404_with_ollama_error(client):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404 and "not found" in info.value.error


def test_embeddings_come_from_the_large_member(client):
    out = client.embed("tiny", input=["hello", "world"])  # compared with llama.cpp's own in test_embeddings
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 128


def test_temperature_zero_is_deterministic(client):
    prompts = [
        client.generate("tiny", "the cat", options={"temperature": 0, "num_predict": 16}).response
        for _ in range(3)
    ]
    assert prompts[0] and len(set(prompts)) == 1
    sampled = {
        client.generate(
            "tiny", "the cat", options={"temperature": 1.5, "num_predict": 16, "seed": s}
        ).response
        for s in range(4)
    }
    assert len(sampled) > 1  # and sampling does vary, so the equality above means something


def test_show_tells_template_system_parameters_and_tools_capability(client):
    shown = client.show("tiny-tools")
    assert "tools" in shown.capabilities and "Tools:" in shown.template
    assert shown.modelinfo["nanocommander.alpha"] == 0.5
    assert 'stop                           "<|im_end|>"' in shown.parameters
    assert client.show("tiny").capabilities == ["completion"]


def test_tools_and_system_are_rendered_through_the_chat_template(client):
    messages = [{"role": "user", "content": "weather?"}]
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    plain = client.chat("tiny-tools", messages=messages, options={"num_predict": 1})
    with_tools = client.chat("tiny-tools", messages=messages, tools=[tool], options={"num_predict": 1})
    # the tools block (name, description, schema) went into the prompt
    assert with_tools.prompt_eval_count > plain.prompt_eval_count + 20
    own_system = client.chat(
        "tiny-tools", messages=[{"role": "system", "content": "x"}, *messages], options={"num_predict": 1}
    )
    assert own_system.prompt_eval_count < plain.prompt_eval_count  # the recipe's system prompt was replaced


def test_generate_context_continues_a_conversation(client):
    first = client.generate("tiny", "hello", options=GREEDY)
    second = client.generate("tiny", "more", context=first.context, options=GREEDY)
    assert second.prompt_eval_count > len(first.context)
    assert second.context[: len(first.context)] == first.context


def test_json_schema_format(client):
    import json

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    out = client.chat(
        "tiny",
        messages=[{"role": "user", "content": "a number"}],
        format=schema,
        options={"temperature": 0, "num_predict": 60},
    )
    assert out.done_reason == "stop" and set(json.loads(out.message.content)) == {"n"}
    assert isinstance(json.loads(out.message.content)["n"], int)


def test_ps_and_list_with_the_client(client):
    client.generate("tiny-lora", "x", options={"num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    assert running["tiny-lora:latest"].size > 0 and running["tiny-lora:latest"].context_length > 0
    listed = {m.model: m for m in client.list().models}
    assert listed["tiny-lora:latest"].details.family == "llama" and listed["tiny-lora:latest"].digest
