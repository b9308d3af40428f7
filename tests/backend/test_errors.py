"""Bad input gets the protocol's own error shape and status, never a 500 or a traceback."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize(
    "path,shape",
    [("/api/chat", "ollama"), ("/v1/chat/completions", "openai"), ("/api/v1/generate", "kobold")],
)
def test_broken_json(server, path, shape):
    r = httpx.post(server.url + path, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    body = r.json()
    if shape == "ollama":
        assert "invalid JSON" in body["error"]
    elif shape == "openai":
        assert body["error"]["type"] == "invalid_request_error"
    else:
        assert body["detail"]["type"] == "bad_input"


def test_wrong_option_type_is_rejected_unknown_and_retired_ignored(server):
    r = httpx.post(
        f"{server.url}/api/chat",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "x"}],
            "options": {"temperature": "hot"},
            "stream": False,
        },
    )
    assert r.status_code == 400 and 'option "temperature" must be of type' in r.json()["error"]
    r = httpx.post(
        f"{server.url}/api/chat",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "x"}],
            "stream": False,
            "surprise": 1,
            "options": {"tfs_z": 1.0, "use_mlock": True, "made_up": 3, "num_predict": 2},
        },
    )
    assert r.status_code == 200, r.text


def test_oversize_body_is_413_in_the_protocol_shape(server):
    big = {"model": "tiny", "prompt": "x" * 200_000}
    r = httpx.post(f"{server.url}/api/generate", json=big)
    assert r.status_code == 413 and "too large" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/completions", json=big)
    assert r.status_code == 413 and "too large" in r.json()["error"]["message"]


def test_unknown_model_in_openai_shape(server):
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "ghost", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_hostile_names_are_refused(server):
    for name in ("../../etc/passwd", "", "/abs", "a" * 500):
        r = httpx.post(f"{server.url}/api/show", json={"model": name})
        assert r.status_code in (400, 404), (name, r.status_code)
        assert "error" in r.json()


def test_oversize_prompt_is_a_clear_400(server):
    prompt = "the " * 1500  # beyond the 1024-token context of the `tiny` recipe, within the body cap
    r = httpx.post(
        f"{server.url}/api/generate", json={"model": "tiny", "prompt": prompt, "raw": True, "stream": False}
    )
    assert r.status_code == 400 and "context size" in r.json()["error"]


OLLAMA_BAD = [
    ("/api/generate", {"model": "tiny", "prompt": 5}),
    ("/api/generate", {"model": ["tiny"], "prompt": "x"}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "stream": "no"}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": "hot"}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"num_predict": "ten"}}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"stop": [1, 2]}}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"member": "huge"}}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"alpha": "high"}}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "keep_alive": "a while"}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "keep_alive": True}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "context": "abc"}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "context": [10**9]}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "format": 3}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "raw": True, "system": "s"}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "template": "{% if %}"}),
    ("/api/generate", {"prompt": "x"}),
    ("/api/chat", {"model": "tiny", "messages": "hi"}),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": {"a": 1}}]}),
    ("/api/chat", {"model": "tiny", "messages": [{"content": "x"}]}),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": "all"}),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "format": {"type": 7}}),
    ("/api/show", {"model": 7}),
    ("/api/show", {}),
    ("/api/embed", {"model": "tiny", "input": 5}),
    ("/api/embed", {"model": "tiny", "input": "x", "dimensions": -1}),
    ("/api/embeddings", {"model": "tiny", "prompt": ["x"]}),
]


@pytest.mark.parametrize("path,body", OLLAMA_BAD)
def test_wrong_types_are_400_in_ollama_shape(server, path, body):
    r = httpx.post(server.url + path, json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]


OPENAI_BAD = [
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, "too short"),
    ("/v1/chat/completions", {"model": "tiny", "messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, "role"),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"},
        "max_tokens",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
        "temperature",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
        "stream",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
        "response_format",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream_options": 1},
        "stream_options",
    ),
    ("/v1/completions", {"model": "tiny", "prompt": 5}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "stop": 3}, "stop"),
]


@pytest.mark.parametrize("path,body,word", OPENAI_BAD)
def test_wrong_types_are_400_in_openai_shape(server, path, body, word):
    r = httpx.post(server.url + path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and word in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_unknown_paths_and_methods_in_the_protocol_shape(server):
    r = httpx.get(f"{server.url}/api/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{server.url}/api/chat")
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(f"{server.url}/api/chat", content=b"[1, 2]")
    assert r.status_code == 400 and "object" in r.json()["error"]
    r = httpx.request("DELETE", f"{server.url}/api/delete", json={"model": "never-was"})
    assert r.status_code in (400, 404) and "error" in r.json()
    r = httpx.post(f"{server.url}/api/copy", json={"source": "never-was", "destination": "x"})
    assert r.status_code in (400, 404) and "error" in r.json()


def test_embeddings_for_an_unknown_model_are_404(server):
    r = httpx.post(f"{server.url}/api/embed", json={"model": "ghost", "input": "x"})
    assert r.status_code == 404 and "not found" in r.json()["error"]


def test_a_command_line_recipe_cannot_be_deleted_through_the_api(server):
    r = httpx.request("DELETE", f"{server.url}/api/delete", json={"model": "tiny"})
    assert r.status_code == 400 and "command line" in r.json()["error"]
    assert "tiny:latest" in {m["model"] for m in httpx.get(f"{server.url}/api/tags").json()["models"]}
