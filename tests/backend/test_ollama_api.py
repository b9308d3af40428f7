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


def test_embeddings_answer_as_for_a_model_without_that_capability(client):
    with pytest.raises(ollama.ResponseError) as info:
        client.embed("tiny", input="hello")
    assert info.value.status_code == 400 and "does not support embeddings" in info.value.error
