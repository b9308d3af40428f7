"""Safe defaults: the bearer key, Origin and Host checks, loopback-only unless a key is set, and
inputs that used to crash a handler (lone surrogates, deep nesting, alpha overflow) answered with 400s."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import httpx
import ollama
import openai
import pytest
from helpers import free_port

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
    port = free_port()
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


# -- Origin and Host (drive-by web pages, DNS rebinding) --------------------------------------------

EVIL = {"Origin": "http://evil.example", "Content-Type": "text/plain"}  # a "simple" request: no preflight


@pytest.fixture(scope="module")
def open_server(start_server, recipe_of):
    """No key, loopback bind (the default), one extra allowed origin."""
    return start_server([recipe_of("tiny")], origins=["https://ui.example"])


def _post(url: str, body: object, headers: dict[str, str], method: str = "POST") -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.request(method, url, content=data, headers=headers, timeout=60)


def test_cross_origin_simple_requests_to_every_mutating_route_are_403_and_change_nothing(
    open_server, tmp_path
):
    from nanocommander.registry import Registry

    url = open_server.url
    digest = "sha256:" + hashlib.sha256(b"payload").hexdigest()
    gen = {"model": "tiny", "prompt": "hi", "options": {"num_predict": 2}}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    attempts = [
        ("/api/copy", {"source": "tiny", "destination": "stolen"}, "POST"),
        ("/api/create", {"model": "made", "from": "tiny"}, "POST"),
        ("/api/pull", {"model": "hf.co/evil/model"}, "POST"),
        ("/api/push", {"model": "tiny", "destination": "hf.co/evil/leak"}, "POST"),
        ("/api/delete", {"model": "tiny"}, "DELETE"),
        (f"/api/blobs/{digest}", b"payload", "POST"),
        ("/api/generate", gen, "POST"),
        ("/api/chat", {**chat, "options": {"num_predict": 2}}, "POST"),
        ("/v1/chat/completions", chat, "POST"),
        ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2}, "POST"),
        ("/api/v1/generate", {"prompt": "hi", "max_length": 2}, "POST"),
        ("/api/extra/generate/stream", {"prompt": "hi", "max_length": 2}, "POST"),
        ("/api/extra/abort", {}, "POST"),
        ("/api/extra/tokencount", {"prompt": "hi"}, "POST"),
    ]
    for path, body, method in attempts:
        r = _post(url + path, body, EVIL, method)
        assert r.status_code == 403, (path, r.status_code, r.text)
        assert "origin" in r.text and "Access-Control-Allow-Origin" not in r.headers
    # nothing happened: no model stored or copied, no blob, nothing loaded, no generation counted
    assert Registry().list() == []
    assert not Registry().store.has_blob(digest)
    assert httpx.get(f"{url}/api/ps").json()["models"] == []
    assert httpx.get(f"{url}/api/extra/perf").json()["total_gens"] == 0
    assert [m["model"] for m in httpx.get(f"{url}/api/tags").json()["models"]] == ["tiny:latest"]


def test_a_refused_origin_gets_the_protocols_own_403_on_every_method(open_server):
    h = {"Origin": "https://evil.example"}
    r = httpx.get(f"{open_server.url}/api/tags", headers=h)
    assert r.status_code == 403 and set(r.json()) == {"error"}
    r = httpx.get(f"{open_server.url}/v1/models", headers=h)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    r = httpx.get(f"{open_server.url}/api/v1/model", headers=h)
    assert r.status_code == 403 and r.json()["detail"]["type"] == "forbidden"
    for method in ("HEAD", "OPTIONS", "PUT", "DELETE"):
        assert httpx.request(method, f"{open_server.url}/api/tags", headers=h).status_code == 403, method
    assert httpx.get(f"{open_server.url}/", headers={"Origin": "null"}).status_code == 403  # sandboxed frames


@pytest.mark.parametrize(
    "origin",
    [
        "https://ui.example",  # NANOCOMMANDER_ORIGINS
        "http://localhost:5173",
        "http://127.0.0.1:8080",
        "http://[::1]:3000",
        "chrome-extension://abcdefghijklmnop",
        "moz-extension://0f1e2d3c",
        "safari-web-extension://x",
        "app://obsidian.md",
        "tauri://localhost",
        "vscode-webview://1234",
        "file://",
    ],
)
def test_allowed_origins_work(open_server, origin):
    r = _post(
        f"{open_server.url}/api/generate",
        {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
        {"Origin": origin},
    )
    assert r.status_code == 200 and r.json()["done"], r.text
    assert r.headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize(
    "host,ok",
    [
        ("evil.example:{port}", False),
        ("evil.example", False),
        ("192.168.1.20:{port}", False),
        ("127.0.0.1.nip.io:{port}", False),
        ("localhost@evil.example", False),
        ("127.0.0.1:{port}", True),
        ("localhost:{port}", True),
        ("LOCALHOST", True),
        ("[::1]:{port}", True),
        ("app.localhost:{port}", True),
        ("ui.example", True),  # its origin is in NANOCOMMANDER_ORIGINS
    ],
)
def test_a_rebinding_host_is_403_on_a_loopback_bind(open_server, host, ok):
    port = open_server.settings.port
    r = httpx.get(f"{open_server.url}/api/tags", headers={"Host": host.format(port=port)})
    assert r.status_code == (200 if ok else 403), r.text
    if not ok:
        assert "DNS rebinding" in r.json()["error"]


def test_a_lan_bind_with_a_key_accepts_other_hosts(start_server, recipe_of):
    lan = start_server([recipe_of("tiny")], host="0.0.0.0", api_key=KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(f"{lan.url}/api/tags", headers={**auth, "Host": f"mybox.lan:{lan.settings.port}"})
    assert r.status_code == 200 and r.json()["models"]
    r = httpx.get(f"{lan.url}/api/tags", headers={"Host": f"mybox.lan:{lan.settings.port}"})
    assert r.status_code == 401  # the key still guards it
    r = httpx.get(f"{lan.url}/api/tags", headers={**auth, "Origin": "http://mybox.lan"})
    assert r.status_code == 403  # a LAN page needs its origin in NANOCOMMANDER_ORIGINS


def test_origin_and_host_rules():
    from nanocommander.backend.guard import host_allowed, origin_allowed

    assert origin_allowed("https://app.example.com", ["https://*.example.com"])
    assert not origin_allowed("https://example.com.evil.io", ["https://*.example.com"])
    assert not origin_allowed("http://localhost.evil.io", [])
    assert not origin_allowed("http://127.0.0.1.evil.io:80", [])
    assert origin_allowed("anything://x", ["*"])
    assert host_allowed("evil.example", "0.0.0.0", []) and host_allowed(None, "127.0.0.1", [])
    assert host_allowed("box.lan:80", "::1", ["http://box.lan:3000"])
    assert not host_allowed("box.lan.evil.io", "localhost", ["http://box.lan:3000"])


# -- input that used to give a 500 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,raw,field",
    [
        ("/api/generate", b'{"model": "tiny", "prompt": "a\\udcffb"}', "prompt"),
        (
            "/api/chat",
            b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
            "messages[0].content",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}',
            "messages[0].content",
        ),
        ("/api/v1/generate", b'{"prompt": "x", "stop_sequence": ["\\ud83d"]}', "stop_sequence[0]"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field(open_server, path, raw, field):
    r = httpx.post(open_server.url + path, content=raw)
    assert r.status_code == 400, r.text
    message = str(r.json())
    assert f'"{field}"' in message and "surrogate" in message and "Traceback" not in r.text
    ok = b'{"model": "tiny", "prompt": "\\ud83d\\ude00", "stream": false, "options": {"num_predict": 1}}'
    assert httpx.post(f"{open_server.url}/api/generate", content=ok, timeout=60).status_code == 200  # a pair


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b'{"a":' * 100_000, b'{"model": "tiny", "options": ' + b"[" * 150 + b"]" * 150 + b"}"],
)
def test_deep_nesting_is_a_400(open_server, raw):
    for path, shape in (("/api/chat", "error"), ("/v1/completions", "error"), ("/api/v1/generate", "detail")):
        r = httpx.post(open_server.url + path, content=raw)
        assert r.status_code == 400 and "nested deeper than 100" in r.text and shape in r.json(), r.text


def test_alpha_beyond_its_range_is_a_400_in_each_protocol(open_server):
    url = open_server.url
    for alpha in ("1e308", "-101", "NaN", "Infinity", "1e999"):
        r = httpx.post(
            f"{url}/api/generate",
            content=f'{{"model": "tiny", "prompt": "x", "options": {{"alpha": {alpha}}}}}',
        )
        assert r.status_code == 400 and '"alpha" must be' in r.json()["error"], (alpha, r.text)
        r = httpx.post(
            f"{url}/v1/chat/completions",
            content=(
                f'{{"model": "tiny", "alpha": {alpha}, "messages": [{{"role": "user", "content": "x"}}]}}'
            ),
        )
        assert r.status_code == 400 and '"alpha" must be' in r.json()["error"]["message"], (alpha, r.text)
        r = httpx.post(f"{url}/api/v1/generate", content=f'{{"prompt": "x", "alpha": {alpha}}}')
        assert r.status_code == 400 and r.json()["detail"]["type"] == "bad_input", (alpha, r.text)
    r = httpx.post(
        f"{url}/api/generate",
        json={"model": "tiny", "prompt": "x", "stream": False, "options": {"alpha": 100, "num_predict": 2}},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["done"]  # the bound itself is allowed


def test_xtc_over_many_tokens_does_not_crash_the_server(open_server):
    """llama.cpp's XTC advances the candidates' data pointer; the sampler must put it back each
    step, or the next step writes past its buffer and the process dies (found by the fuzzer)."""
    body = {
        "prompt": "hi",
        "max_length": 40,
        "xtc_probability": 0.9,
        "xtc_threshold": 0.01,
        "ban_eos_token": True,
    }
    for seed in range(12):
        r = httpx.post(f"{open_server.url}/api/v1/generate", json={**body, "sampler_seed": seed}, timeout=60)
        assert r.status_code == 200 and r.json()["results"], r.text
    assert httpx.get(f"{open_server.url}/api/version").status_code == 200
