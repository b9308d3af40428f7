"""Observability: one access-log line per request (method, path, status, model, alpha, tokens, time),
request bodies at debug level, and `serve` naming every port it listens on."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest
from helpers import free_port

from nanocommander.backend.accesslog import debug_from_env


@pytest.fixture(scope="module")
def logged(start_server, recipe_of):
    return start_server([recipe_of("tiny")], default_model="tiny")


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nanocommander.access"]


def test_one_line_per_request_with_model_alpha_tokens_and_time(logged, caplog):
    caplog.set_level(logging.INFO, logger="nanocommander.access")
    url = logged.url
    httpx.post(
        f"{url}/api/v1/generate",
        json={"prompt": "Hi", "max_length": 4, "alpha": 0.5, "temperature": 0},
        timeout=60,
    )
    httpx.post(
        f"{url}/v1/completions",
        json={"model": "tiny", "prompt": "Hi", "max_tokens": 3, "temperature": 0},
        timeout=60,
    )
    httpx.post(
        f"{url}/api/generate",
        json={
            "model": "tiny",
            "prompt": "Hi",
            "options": {"num_predict": 2, "member": "large", "temperature": 0},  # greedy: no early end token
            "stream": False,
        },
        timeout=60,
    )
    httpx.get(f"{url}/api/version")
    httpx.post(f"{url}/api/show", json={"model": "nope"})
    got = lines(caplog)
    assert re.fullmatch(
        r'127\.0\.0\.1 "POST /api/v1/generate" 200 model=tiny:latest alpha=0\.5 tokens=\d+\+4 '
        r"\d+\.\d{3}s",
        got[0],
    ), got[0]
    assert re.search(r'"POST /v1/completions" 200 model=tiny:latest alpha=1 tokens=\d+\+3 ', got[1])
    assert re.search(
        r'"POST /api/generate" 200 model=tiny:latest alpha=1 member=large tokens=\d+\+2 ', got[2]
    )
    assert re.fullmatch(r'127\.0\.0\.1 "GET /api/version" 200 \d+\.\d{3}s', got[3])
    assert '"POST /api/show" 404' in got[4]


def test_bodies_only_at_debug_level(logged, caplog):
    caplog.set_level(logging.INFO, logger="nanocommander.access")
    httpx.post(f"{logged.url}/api/extra/tokencount", json={"prompt": "secret-ish text"})
    assert not any("secret-ish" in m for m in lines(caplog))
    caplog.set_level(logging.DEBUG, logger="nanocommander.access")
    httpx.post(f"{logged.url}/api/extra/tokencount", json={"prompt": "visible text"})
    assert any('"POST /api/extra/tokencount" body: {"prompt":"visible text"}' in m for m in lines(caplog))


def test_debug_env_switch():
    assert debug_from_env({"NANOCOMMANDER_DEBUG": "1"}) and debug_from_env({"NANOCOMMANDER_DEBUG": "true"})
    assert not debug_from_env({}) and not debug_from_env({"NANOCOMMANDER_DEBUG": "0"})


def test_serve_names_every_port_and_logs_requests(tiny, tmp_path):
    """`nanocommander serve RECIPE --kobold-port P --default-model NAME --verbose`, as the issue ran it."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"name: tiny\nmembers:\n  large: {{path: {tiny['large']}}}\n  base: {{path: {tiny['base']}}}\n"
        f"  tuned: {{path: {tiny['tuned']}}}\nalpha: 1.0\n"
    )
    main, kobold = free_port(), free_port()
    env = {**os.environ, "NANOCOMMANDER_MODELS": str(tmp_path / "store")}
    env.pop("NANOCOMMANDER_DEBUG", None)
    cmd = [
        sys.executable,
        "-m",
        "nanocommander",
        "serve",
        str(recipe),
        "--host",
        f"127.0.0.1:{main}",
        "--kobold-port",
        str(kobold),
        "--default-model",
        "tiny",
        "--verbose",
    ]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and sum("listening on" in line for line in err) < 2:
            time.sleep(0.1)
        out = httpx.post(
            f"http://127.0.0.1:{kobold}/api/v1/generate",
            json={"prompt": "Hello", "max_length": 3},
            timeout=60,
        )
        assert out.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{main}/api/version").status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(10)
    text = "".join(err)
    assert f"listening on http://127.0.0.1:{main} (Ollama /api, OpenAI /v1" in text
    assert f"listening on http://127.0.0.1:{kobold} (the --kobold-port" in text
    assert "Kobold clients get tiny:latest" in text
    assert re.search(r'"POST /api/v1/generate" 200 model=tiny:latest alpha=1 tokens=\d+\+3 \d', text), text
    assert '"POST /api/v1/generate" body: {"prompt":"Hello","max_length":3}' in text
    assert '"GET /api/version" 200' in text
