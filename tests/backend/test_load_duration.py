"""`load_duration` is the load on the reply that loaded the model and ~0 on warm replies, as Ollama
reports it (issue 23, item 5); `total_duration` no longer adds a stale load to every reply."""

from __future__ import annotations

import json

import pytest
import requests

from nanocommander.backend.app import MANAGER

WARM_NS = 50_000_000  # 50 ms: a dict lookup and a lock, far below any load


def _final(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    assert lines[-1]["done"]
    return lines[-1]


@pytest.mark.parametrize("route", ["generate", "chat"])
def test_load_duration_only_on_the_loading_reply(route, recipe_of, start_server):
    live = start_server([recipe_of(f"load-{route}")], keep_alive=300)
    name = f"load-{route}"
    body = (
        {"model": name, "prompt": "hi"}
        if route == "generate"
        else {"model": name, "messages": [{"role": "user", "content": "hi"}]}
    )
    body["options"] = {"num_predict": 2, "temperature": 0}
    url = f"{live.url}/api/{route}"
    first = _final(requests.post(url, json={**body, "stream": False}, timeout=60))
    load_s = live.app[MANAGER].loaded[f"{name}:latest"].composite.load_s
    assert first["load_duration"] >= int(load_s * 1e9) > 0
    assert first["total_duration"] >= first["load_duration"]
    for stream in (False, True):
        warm = _final(requests.post(url, json={**body, "stream": stream}, timeout=60))
        assert 0 <= warm["load_duration"] < WARM_NS
        assert warm["load_duration"] < first["load_duration"]
        assert warm["total_duration"] < first["total_duration"] + warm["eval_duration"] + WARM_NS
