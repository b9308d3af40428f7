"""NUM_PARALLEL slots through the server: that many requests decode together, the rest queue, then 503."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import httpx
import pytest

from nanocommander.backend.server import MANAGER
from nanocommander.registry import estimate_memory

LONG = {  # ~2000 tokens: seconds on the tiny models; seed 0 meets no end token before that
    "model": "tiny",
    "prompt": "tell me",
    "raw": True,
    "options": {"num_predict": 2000, "temperature": 1.0, "seed": 0},
}


@pytest.fixture(scope="module")
def two_slots(start_server, recipe_of):
    return start_server(
        [
            recipe_of("tiny", extra="parameters: {num_ctx: 2048}\n"),
            recipe_of("many-slots", extra="parameters: {num_ctx: 2048, num_parallel: 100000}\n"),
        ],
        num_parallel=2,
        max_queue=1,
    )


def test_two_slots_run_together_a_third_waits_a_fourth_is_refused(two_slots):
    url = two_slots.url

    async def main():
        async with aiohttp.ClientSession() as s:
            first = await s.post(f"{url}/api/generate", json=LONG)
            second = await s.post(f"{url}/api/generate", json=LONG)
            lines = [json.loads(await r.content.readline()) for r in (first, second)]
            ps = (await (await s.get(f"{url}/api/ps")).json())["models"][0]
            third = asyncio.ensure_future(s.post(f"{url}/api/generate", json=LONG))
            await asyncio.sleep(0.5)
            waiting = two_slots.app[MANAGER].loaded["tiny:latest"].composite.scheduler.waiting()
            fourth = await s.post(f"{url}/api/generate", json=LONG)
            refused = fourth.status
            first.close()  # a slot frees: the waiting request starts at once
            third = await asyncio.wait_for(third, 10)
            started = json.loads(await asyncio.wait_for(third.content.readline(), 10))
            second.close()
            third.close()
            return lines, ps, waiting, refused, started

    lines, ps, waiting, refused, started = asyncio.run(main())
    assert all(line.get("done") is False for line in lines), lines  # both streaming at the same time
    assert ps["composite"]["num_parallel"] == 2 and ps["composite"]["active"] == 2
    assert waiting == 1 and refused == 503
    assert started["done"] is False


def test_ps_and_show_state_the_kv_cache_of_every_slot(two_slots):
    httpx.post(f"{two_slots.url}/api/generate", json={"model": "tiny"}, timeout=60)  # load it
    entry = next(
        m for m in httpx.get(f"{two_slots.url}/api/ps").json()["models"] if m["model"] == "tiny:latest"
    )
    kv = entry["composite"]["kv_cache"]
    assert "num_ctx x num_parallel" in kv["formula"]
    recipe = two_slots.app[MANAGER].loaded["tiny:latest"].composite.recipe
    one = estimate_memory(recipe, num_parallel=1)
    assert kv["bytes"] == {role: 2 * m.kv_cache for role, m in one.members.items()}
    assert entry["context_length"] == 2048  # per slot
    shown = httpx.post(f"{two_slots.url}/api/show", json={"model": "tiny"}).json()["composite"]["memory"]
    assert shown["members"]["large"]["num_parallel"] == 2
    assert shown["members"]["large"]["kv_cache"] == 2 * one.members["large"].kv_cache


def test_the_memory_check_counts_every_slot(two_slots):
    """Tiny weights, but 100000 slots of KV cache: refused before loading, saying why."""
    r = httpx.post(f"{two_slots.url}/api/generate", json={"model": "many-slots", "prompt": "x"}, timeout=60)
    assert r.status_code == 500 and "more system memory" in r.json()["error"]
    assert "many-slots:latest" not in two_slots.app[MANAGER].loaded


def test_same_answers_with_one_slot_and_with_four(server, start_server, recipe_of):
    one = start_server([recipe_of("tiny", extra="parameters: {num_ctx: 1024}\n")], num_parallel=1)
    prompts = [f"question {i} " * (i % 3 + 1) for i in range(6)]

    async def answers(url):
        async with aiohttp.ClientSession() as s:

            async def ask(p):
                body = {
                    "model": "tiny",
                    "prompt": p,
                    "stream": False,
                    "options": {"temperature": 0, "num_predict": 12},
                }
                async with s.post(f"{url}/api/generate", json=body) as r:
                    return (await r.json())["response"]

            return await asyncio.gather(*(ask(p) for p in prompts))

    assert asyncio.run(answers(one.url)) == asyncio.run(answers(server.url))
