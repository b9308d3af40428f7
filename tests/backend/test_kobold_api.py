"""KoboldCpp API: the request sequences SillyTavern, KoboldAI Classic and KoboldAI Lite send."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import aiohttp
import httpx

FIXTURE = Path(__file__).parents[1] / "fixtures" / "sillytavern" / "bodies-1.19.0.json"
CLASSIC = next(c["body"] for c in json.loads(FIXTURE.read_text())["cases"] if c["api"] == "kobold")
# SillyTavern's KoboldAI Classic body as its own code builds it (see the fixture), made greedy and short.
ST_SETTINGS = {**{k: v for k, v in CLASSIC.items() if k != "prompt"}, "temperature": 0.0, "max_length": 16}


def test_classic_sequence_version_model_generate(server):
    assert httpx.get(f"{server.url}/api/v1/info/version").json() == {"result": "1.2.5"}
    assert httpx.get(f"{server.url}/api/extra/version").json()["result"] == "KoboldCpp"
    assert httpx.get(f"{server.url}/api/v1/model").json()["result"].startswith("koboldcpp/")
    assert httpx.get(f"{server.url}/api/v1/config/max_context_length").json()["value"] > 0
    out = httpx.post(
        f"{server.url}/api/v1/generate", json={**ST_SETTINGS, "prompt": "Once upon a time"}, timeout=60
    )
    assert out.status_code == 200 and isinstance(out.json()["results"][0]["text"], str)


def sse_tokens(text: str) -> tuple[list[str], list]:
    tokens, reasons = [], []
    for block in text.split("\n\n"):
        if block.startswith("event: message\ndata: "):
            data = json.loads(block.split("data: ", 1)[1])
            tokens.append(data["token"])
            reasons.append(data["finish_reason"])
    return tokens, reasons


def test_stream_is_byte_exact_sse_and_equals_non_streamed(server):
    body = {
        **ST_SETTINGS,
        "prompt": "CJK and emoji follow:",
        "grammar": 'root ::= "日本語 🙂 é" [a-z]*',
        "max_length": 24,
    }
    whole = httpx.post(f"{server.url}/api/v1/generate", json=body, timeout=60).json()["results"][0]["text"]
    r = httpx.post(f"{server.url}/api/extra/generate/stream", json=body, timeout=60)
    assert (
        r.headers["content-type"].startswith("text/event-stream") and r.headers["X-Accel-Buffering"] == "no"
    )
    tokens, reasons = sse_tokens(r.text)
    assert "".join(tokens) == whole
    assert reasons[-1] in ("stop", "length") and all(x is None for x in reasons[:-1])
    assert "".join(tokens).startswith("日本語 🙂 é")  # multi-byte characters arrive whole
    assert all("\ufffd" not in t for t in tokens)


def test_stop_sequence_with_trim_stop_on_and_off(server):
    base = {**ST_SETTINGS, "prompt": "Tell me", "max_length": 30}
    full = httpx.post(f"{server.url}/api/v1/generate", json=base, timeout=60).json()["results"][0]["text"]
    stop = full[5:7]
    cut = full.index(stop)
    trimmed = httpx.post(f"{server.url}/api/v1/generate", json={**base, "stop_sequence": [stop]}).json()
    kept = httpx.post(
        f"{server.url}/api/v1/generate", json={**base, "stop_sequence": [stop], "trim_stop": False}
    ).json()
    assert trimmed["results"][0]["text"] == full[:cut]
    assert kept["results"][0]["text"] == full[:cut] + stop


def test_alpha_in_the_body(server):
    base = {**ST_SETTINGS, "prompt": "The weather", "max_length": 12}
    zero = httpx.post(f"{server.url}/api/v1/generate", json={**base, "alpha": 0}).json()["results"][0]["text"]
    large = httpx.post(f"{server.url}/api/v1/generate", json={**base, "member": "large"}).json()["results"][
        0
    ]["text"]
    one = httpx.post(f"{server.url}/api/v1/generate", json={**base, "alpha": 1}).json()["results"][0]["text"]
    assert zero == large and one != zero


def test_sillytavern_v1_completions_stream_abort_and_tokencount(server):
    assert "data" in httpx.get(f"{server.url}/v1/models").json()
    body = {
        **ST_SETTINGS,
        "prompt": "A long tale:",
        "max_length": 100000,
        "ban_eos_token": True,
        "stream": True,
        "model": "tiny",
    }
    seen: dict = {}

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/v1/completions", json=body) as r:
                n = 0
                async for line in r.content:
                    if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    assert not {"error", "message", "detail"} & set(chunk)
                    n += 1
                    if n == 3:
                        count = await session.post(
                            f"{server.url}/api/extra/tokencount", json={"prompt": "hello"}
                        )
                        seen["count"] = (await count.json())["value"]
                        abort = await session.post(f"{server.url}/api/extra/abort", json={})
                        seen["abort"] = await abort.json()
                seen["chunks"] = n
        t0 = time.perf_counter()
        nxt = httpx.post(
            f"{server.url}/api/v1/generate", json={**ST_SETTINGS, "prompt": "next", "max_length": 3}
        )
        seen["next_s"] = time.perf_counter() - t0
        assert nxt.status_code == 200

    asyncio.run(asyncio.wait_for(main(), 60))
    assert seen["abort"] == {"success": "true", "done": "true"}
    assert seen["count"] > 0 and seen["chunks"] < 1000 and seen["next_s"] < 5


def test_lite_genkey_polling_and_abort_by_genkey(server):
    body = {
        **ST_SETTINGS,
        "prompt": "Lite story",
        "max_length": 100000,
        "ban_eos_token": True,
        "genkey": "KCPP4242",
    }
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(r=httpx.post(f"{server.url}/api/v1/generate", json=body, timeout=60))
    )
    worker.start()
    text = ""
    for _ in range(100):
        time.sleep(0.05)
        text = httpx.post(f"{server.url}/api/extra/generate/check", json={"genkey": "KCPP4242"}).json()[
            "results"
        ][0]["text"]
        if text:
            break
    assert text
    assert (
        httpx.post(f"{server.url}/api/extra/abort", json={"genkey": "KCPP4242"}).json()["success"] == "true"
    )
    worker.join(30)
    assert result["r"].status_code == 200
    assert result["r"].json()["results"][0]["text"].startswith(text)


def test_detokenize_and_perf(server):
    ids = httpx.post(f"{server.url}/api/extra/tokenize", json={"prompt": "héllo"}).json()["ids"]
    assert (
        httpx.post(f"{server.url}/api/extra/detokenize", json={"ids": ids}).json()["result"].endswith("héllo")
    )
    perf = httpx.get(f"{server.url}/api/extra/perf").json()
    assert perf["total_gens"] >= 1 and perf["idle"] in (0, 1)
