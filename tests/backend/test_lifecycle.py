"""Model lifecycle through the API: keep_alive, shared weights, the queue limit, the memory check."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from datetime import datetime

import aiohttp
import httpx
import pytest

from nanocommander.backend.server import MANAGER
from nanocommander.engine.request.recipe import Recipe

# About 2000 tokens (seconds on the tiny models); seed 0 meets no end token before that.
LONG = {
    "model": "tiny",
    "prompt": "tell me",
    "raw": True,
    "options": {"num_predict": 2000, "temperature": 1.0, "seed": 0},
}


@pytest.fixture(scope="module")
def live(tiny, tmp_path_factory, start_server, recipe_of):
    # A "model" of 1 TiB: the tiny large GGUF extended into a sparse file (no disk, no RAM used).
    giant = tmp_path_factory.mktemp("giant") / "giant.gguf"
    shutil.copy(tiny["large"], giant)
    with open(giant, "r+b") as f:
        f.truncate(1 << 40)
    recipes = [
        recipe_of("tiny"),
        recipe_of("tiny-lora", adapter=True),
        Recipe.parse(
            f"name: giant\nmembers:\n  large: {{path: {giant}}}\n  base: {{path: {tiny['base']}}}\n"
            f"  tuned: {{path: {tiny['tuned']}}}\n",
            check_files=True,
        ),
    ]
    return start_server(recipes, keep_alive=300, max_queue=1, num_parallel=1)  # one slot: the second waits


def ps(live) -> dict[str, dict]:
    return {m["model"]: m for m in httpx.get(f"{live.url}/api/ps").json()["models"]}


def test_empty_prompt_loads_and_keep_alive_sets_expiry(live):
    r = httpx.post(f"{live.url}/api/generate", json={"model": "tiny", "keep_alive": "1m"}, timeout=60)
    assert r.json()["done_reason"] == "load"
    expires = datetime.fromisoformat(ps(live)["tiny:latest"]["expires_at"]).timestamp()
    assert 50 < expires - time.time() <= 61
    httpx.post(f"{live.url}/api/chat", json={"model": "tiny", "messages": [], "keep_alive": -1})
    forever = datetime.fromisoformat(ps(live)["tiny:latest"]["expires_at"]).timestamp()
    assert forever - time.time() > 365 * 86400


def test_keep_alive_expiry_unloads(live):
    httpx.post(
        f"{live.url}/api/generate",
        json={"model": "tiny", "prompt": "hi", "keep_alive": "1s", "options": {"num_predict": 1}},
        timeout=60,
    )
    assert "tiny:latest" in ps(live)
    deadline = time.time() + 5
    while "tiny:latest" in ps(live) and time.time() < deadline:
        time.sleep(0.2)
    assert "tiny:latest" not in ps(live)


def test_composites_sharing_member_files_share_loaded_weights(live, tiny):
    for name in ("tiny", "tiny-lora"):
        r = httpx.post(
            f"{live.url}/api/generate", json={"model": name, "prompt": "hi", "options": {"num_predict": 1}}
        )
        assert r.status_code == 200
    assert {"tiny:latest", "tiny-lora:latest"} <= set(ps(live))
    if live.app[MANAGER].fleet is not None:  # a runner each: the weights are shared as mmapped pages
        pids = {m["name"]: m["runner_pid"] for m in httpx.get(f"{live.url}/api/ps").json()["models"]}
        assert pids["tiny:latest"] != pids["tiny-lora:latest"]
        return
    pooled = {p.name for p in live.app[MANAGER].pool.loaded()}
    # large and base are loaded once for both composites; the lora is applied on the shared base
    assert pooled == {tiny["large"].name, tiny["base"].name, tiny["tuned"].name}


def test_a_model_that_does_not_fit_is_refused_with_the_estimate(live):
    r = httpx.post(f"{live.url}/api/generate", json={"model": "giant", "prompt": "hi"})
    assert r.status_code == 500
    message = r.json()["error"]
    assert "requires more system memory" in message and "GiB" in message
    assert "giant:latest" not in ps(live)
    r = httpx.post(
        f"{live.url}/v1/chat/completions",
        json={"model": "giant", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 500 and "more system memory" in r.json()["error"]["message"]


def test_queue_beyond_the_limit_is_503_and_hanging_up_frees_it(live):
    async def main():
        async with aiohttp.ClientSession() as s:
            first = await s.post(f"{live.url}/api/generate", json=LONG)
            assert first.status == 200, await first.text()
            await first.content.readline()  # generating
            second = asyncio.ensure_future(s.post(f"{live.url}/api/generate", json=LONG))
            await asyncio.sleep(0.5)  # queued behind the first (max_queue=1)
            third = await s.post(f"{live.url}/api/generate", json=LONG)
            status, body = third.status, await third.json()
            oa = await s.post(f"{live.url}/v1/completions", json={"model": "tiny", "prompt": "x"})
            oa_status, oa_body = oa.status, await oa.json()
            first.close()  # hang up: the queued request starts
            second = await second
            line = json.loads(await asyncio.wait_for(second.content.readline(), 10))
            second.close()
            await asyncio.sleep(0.5)
            return status, body, oa_status, oa_body, line, live.app[MANAGER].loaded["tiny:latest"].active

    status, body, oa_status, oa_body, line, active = asyncio.run(main())
    assert status == 503 and "busy" in body["error"]
    assert oa_status == 503 and oa_body["error"]["type"] == "server_error"
    assert line["done"] is False and line["response"] is not None
    assert active == 0  # both hung-up generations stopped within moments, long before 2000 tokens
    # once both hung up, the model is free again at once
    t0 = time.perf_counter()
    r = httpx.post(
        f"{live.url}/api/generate",
        json={"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 2}},
        timeout=10,
    )
    assert r.status_code == 200 and time.perf_counter() - t0 < 5


def test_unloading_a_model_in_use_waits_for_its_requests(live):
    body = {**LONG, "options": {**LONG["options"], "num_predict": 300}}

    async def main():
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"{live.url}/api/generate", json=body)
            assert r.status == 200
            await r.content.readline()
            unload = await s.post(f"{live.url}/api/generate", json={"model": "tiny", "keep_alive": 0})
            reason = (await unload.json())["done_reason"]
            lines = [json.loads(line) async for line in r.content]
            return reason, lines

    reason, lines = asyncio.run(main())
    assert reason == "unload"
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 300
    assert "tiny:latest" not in ps(live)  # and once it finished, the model went away
