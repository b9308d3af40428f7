"""/api/show and /v1/models answer from cached GGUF headers: warm calls stay under 100 ms (the issue's
bound; SillyTavern's Connect and the extension's member list wait on them). Best of 3 calls, so one slow
moment on a shared CPU does not fail the test; a recomputed header read takes far longer on real models."""

from __future__ import annotations

import time

import httpx


def best_of_3(call) -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return min(times)


def test_warm_show_and_models_under_100ms(start_server, recipe_of):
    live = start_server([recipe_of("tiny"), recipe_of("tiny-lora", adapter=True)])
    with httpx.Client(base_url=live.url, timeout=30) as client:

        def show():
            r = client.post("/api/show", json={"model": "tiny-lora"})
            assert r.status_code == 200 and r.json()["composite"]["memory"]["total"] > 0

        def models():
            assert client.get("/v1/models").json()["data"]

        show(), models()  # cold: headers read once
        assert best_of_3(show) < 0.1
        assert best_of_3(models) < 0.1


def test_headers_are_read_once_per_file(start_server, recipe_of, monkeypatch):
    """What keeps warm calls fast on multi-GB models: no header is read again until its file changes."""
    from nanocommander import gguf_file as gguf_info

    reads = []
    real = gguf_info.read_header
    monkeypatch.setattr(gguf_info, "read_header", lambda path: reads.append(path) or real(path))
    monkeypatch.setattr(gguf_info, "_CACHE", {})
    live = start_server([recipe_of("tiny-once")])
    with httpx.Client(base_url=live.url, timeout=30) as client:
        client.post("/api/show", json={"model": "tiny-once"}).raise_for_status()
        first = len(reads)
        assert first == 3  # large, base, tuned
        for _ in range(3):
            client.post("/api/show", json={"model": "tiny-once"}).raise_for_status()
            client.get("/v1/models").raise_for_status()
            client.get("/api/tags").raise_for_status()
        assert len(reads) == first
