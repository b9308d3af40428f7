"""Concurrent clients get their own, uncrossed answers; a disconnect frees the model at once."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import httpx

from nanocommander.backend.server import MANAGER

PROMPTS = [f"question number {i}" for i in range(8)]


async def stream_chat(session, url, prompt, n=10):
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": prompt}],
        "options": {"temperature": 0, "num_predict": n},
    }
    text = ""
    async with session.post(f"{url}/api/chat", json=body) as r:
        assert r.status == 200
        async for line in r.content:
            item = json.loads(line)
            text += item["message"]["content"]
    return text


def test_eight_concurrent_streaming_chats_are_correct_and_uncrossed(server):
    alone = {
        p: "".join(
            json.loads(line)["message"]["content"]
            for line in httpx.post(
                f"{server.url}/api/chat",
                json={
                    "model": "tiny",
                    "messages": [{"role": "user", "content": p}],
                    "options": {"temperature": 0, "num_predict": 10},
                },
            ).text.splitlines()
        )
        for p in PROMPTS
    }

    async def main():
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(stream_chat(session, server.url, p) for p in PROMPTS))

    results = asyncio.run(main())
    assert dict(zip(PROMPTS, results, strict=True)) == alone
    assert len(set(results)) > 1


def test_client_disconnect_mid_stream_frees_the_model(server):
    manager = server.app[MANAGER]

    async def main():
        async with aiohttp.ClientSession() as session:
            body = {  # ~1000 tokens: seconds of work if nobody stopped it
                "model": "tiny",
                "prompt": "tell me",
                "raw": True,
                "options": {"num_predict": 1000, "temperature": 1.0, "seed": 0},
            }
            r = await session.post(f"{server.url}/api/generate", json=body)
            assert r.status == 200, await r.text()
            first = json.loads(await r.content.readline())
            assert first["done"] is False
            r.close()  # hang up mid-stream
        t0 = time.perf_counter()
        while manager.loaded["tiny:latest"].active and time.perf_counter() - t0 < 5:
            await asyncio.sleep(0.01)
        freed = time.perf_counter() - t0
        async with aiohttp.ClientSession() as session:
            text = await stream_chat(session, server.url, "next one", n=3)
        return freed, time.perf_counter() - t0, text

    freed, elapsed, text = asyncio.run(main())
    assert freed < 1.0  # the generation stopped within moments of the hang-up
    assert elapsed < 2.0 and text
