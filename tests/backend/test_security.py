"""Safe defaults: the bearer key, the CORS allow-list, loopback-only unless a key is set."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import ollama
import openai
import pytest

KEY = "s3cret-key"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 2}}


@pytest.fixture(scope="module")
def locked(start_server, recipe_of):
    return start_server([recipe_of("tiny")], api_key=KEY, origins=["https://ui.example"])


def test_the_key_is_required_in_each_protocol_shape(locked):
    r = httpx.post(f"{locked.url}/api/chat", json=CHAT)
    assert r.status_code == 401 and "API key" in r.json()["error"]
    r = httpx.get(f"{locked.url}/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # liveness and version stay open (Open WebUI's connection check)
    assert httpx.get(f"{locked.url}/").status_code == 200
    assert httpx.get(f"{locked.url}/api/version").status_code == 200


def test_official_clients_with_the_key(locked):
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=locked.url).list()
    assert info.value.status_code == 401
    client = ollama.Client(host=locked.url, headers={"Authorization": f"Bearer {KEY}"})
    assert "tiny:latest" in {m.model for m in client.list().models}
    assert client.chat(**CHAT).done
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{locked.url}/v1", api_key="nope").models.list()
    models = openai.OpenAI(base_url=f"{locked.url}/v1", api_key=KEY).models.list()
    assert [m.id for m in models.data] == ["tiny:latest"]


@pytest.mark.parametrize(
    "origin,allowed",
    [
        ("https://ui.example", True),
        ("http://localhost:3000", True),
        ("http://127.0.0.1:8080", True),
        ("https://evil.example", False),
    ],
)
def test_cors_allow_list(locked, origin, allowed):
    pre = httpx.options(
        f"{locked.url}/api/chat",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    got = httpx.get(f"{locked.url}/api/version", headers={"Origin": origin})
    if allowed:
        assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == origin
        assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
        assert got.headers["Access-Control-Allow-Origin"] == origin
    else:
        assert pre.status_code == 403 and "Access-Control-Allow-Origin" not in pre.headers
        assert "Access-Control-Allow-Origin" not in got.headers


def test_serve_refuses_to_listen_beyond_loopback_without_a_key(tmp_path):
    env = {**os.environ, "NANOCOMMANDER_HOST": "0.0.0.0:0", "NANOCOMMANDER_MODELS": str(tmp_path)}
    env.pop("NANOCOMMANDER_API_KEY", None)
    out = subprocess.run(
        [sys.executable, "-m", "nanocommander", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (
        out.returncode != 0 and "NANOCOMMANDER_API_KEY" in out.stderr and "--insecure-no-auth" in out.stderr
    )


def test_serve_a_recipe_from_the_command_line(tmp_path, tiny):
    """`nanocommander serve RECIPE` on NANOCOMMANDER_HOST serves it as name:latest, with the store's models."""
    recipe = tmp_path / "cli.yaml"
    recipe.write_text(
        f"name: from-cli\nmembers:\n  large: {{path: {tiny['large']}}}\n  base: {{path: {tiny['base']}}}\n"
        f"  tuned: {{path: {tiny['tuned']}}}\n"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "NANOCOMMANDER_HOST": f"127.0.0.1:{port}",
        "NANOCOMMANDER_MODELS": str(tmp_path / "m"),
    }
    env.pop("NANOCOMMANDER_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanocommander", "serve", str(recipe)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                tags = httpx.get(f"http://127.0.0.1:{port}/api/tags").json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.time() < deadline, (
                    proc.stderr.read() if proc.stderr else ""
                )
                time.sleep(0.2)
        assert [m["model"] for m in tags["models"]] == ["from-cli:latest"]
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/generate",
            json={"model": "from-cli", "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["done"]
    finally:
        proc.terminate()
        proc.wait(30)
