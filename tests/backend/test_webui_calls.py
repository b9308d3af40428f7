"""Open WebUI's calls as its ollama router makes them (see the Ollama reference, section 3)."""

from __future__ import annotations

import json
import re
from datetime import datetime

import httpx

# What Open WebUI's payload.py puts in `options` (retired ones included), plus stray root keys.
WEBUI_OPTIONS = {
    "temperature": 0,
    "top_p": 0.9,
    "top_k": 40,
    "min_p": 0.0,
    "seed": 1,
    "num_ctx": 1024,
    "num_batch": 512,
    "num_keep": 4,
    "num_predict": 8,
    "repeat_last_n": 64,
    "repeat_penalty": 1.1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "stop": ["\n\n\n"],
    "mirostat": 0,
    "mirostat_eta": 0.1,
    "mirostat_tau": 5.0,
    "num_gpu": 0,
    "use_mmap": True,
    "use_mlock": False,
    "num_thread": 2,
}


def test_open_webui_session(server):
    url = server.url
    assert httpx.head(f"{url}/").status_code == 200
    version = httpx.get(f"{url}/api/version").json()["version"]
    assert tuple(map(int, re.sub(r"^v|-.*", "", version).split("."))) >= (0, 1, 0)  # its min-version parse

    models = httpx.get(f"{url}/api/tags").json()["models"]
    ids = [m["model"] for m in models]
    assert "tiny:latest" in ids and all(m["name"] == m["model"] for m in models)
    tiny = next(m for m in models if m["model"] == "tiny:latest")
    assert tiny["details"]["parameter_size"] and tiny["details"]["quantization_level"] and tiny["size"] > 0

    body = {
        "model": "tiny:latest",  # Open WebUI appends :latest
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Hello"},
        ],
        "stream": True,
        "options": WEBUI_OPTIONS,
        "keep_alive": "5m",
        "metadata": {"chat_id": "x"},
        "format": "",
    }
    content, final = "", None
    with httpx.stream("POST", f"{url}/api/chat", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        for line in r.iter_lines():
            item = json.loads(line)  # one object per line, no blank lines
            content += item["message"]["content"]
            if item["done"]:
                final = item
    assert final is not None and final["done_reason"] in ("stop", "length")
    for key in (
        "prompt_eval_count",
        "eval_count",
        "eval_duration",
        "prompt_eval_duration",
        "total_duration",
        "load_duration",
    ):
        assert isinstance(final[key], int), key
    assert final["eval_count"] <= 8

    running = httpx.get(f"{url}/api/ps").json()["models"]
    entry = next(m for m in running if m["model"] == "tiny:latest")
    assert datetime.fromisoformat(entry["expires_at"]).timestamp() > datetime.now().timestamp()

    # /ollama/api/unload -> generate with an empty prompt and keep_alive 0
    r = httpx.post(
        f"{url}/api/generate", json={"model": "tiny:latest", "keep_alive": 0, "prompt": "", "stream": False}
    )
    assert r.status_code == 200 and r.json()["done_reason"] == "unload"
    assert "tiny:latest" not in [m["model"] for m in httpx.get(f"{url}/api/ps").json()["models"]]


def test_open_webui_error_detail_is_read_from_the_error_key(server):
    r = httpx.post(
        f"{server.url}/api/chat",
        json={"model": "nothing:latest", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 404 and "nothing:latest" in r.json()["error"]
