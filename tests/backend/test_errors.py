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
