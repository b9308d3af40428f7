"""The stream writer inside the real app: one object per line, failures before and after the first byte."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from nanocommander.backend.config import Settings
from nanocommander.backend.server import create_app
from nanocommander.backend.streaming import ndjson, sse, stream_response
from nanocommander.errors import ContextOverflow, ServerBusy


async def items(fail_at: int, exc: Exception):
    for i in range(3):
        if i == fail_at:
            raise exc
        yield {"n": i}
        await asyncio.sleep(0)


def run_app(routes):
    """Serve create_app(...) plus test routes on a free loopback port; returns fetch(path) results."""

    async def main():
        app = create_app(Settings(port=0), [])
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        out = {}
        async with aiohttp.ClientSession() as s:
            for path in routes:
                async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                    out[path] = (r.status, r.headers.get("Content-Type"), await r.read())
        await runner.cleanup()
        return out

    return asyncio.run(main())


def ndjson_handler(fail_at, exc):
    async def handler(request):
        return await stream_response(
            request,
            items(fail_at, exc),
            content_type="application/x-ndjson",
            encode=ndjson,
            on_error=lambda m: ndjson({"error": m}),
        )

    return handler


def sse_handler(fail_at, exc):
    async def handler(request):
        return await stream_response(
            request,
            items(fail_at, exc),
            content_type="text/event-stream",
            encode=sse,
            trailer=b"data: [DONE]\n\n",
            on_error=lambda m: sse({"error": {"message": m}}),
        )

    return handler


@pytest.fixture(scope="module")
def results():
    return run_app(
        {
            "/api/ok": ndjson_handler(99, RuntimeError()),
            "/api/late": ndjson_handler(2, ContextOverflow(10, 5, 12)),
            "/api/bug": ndjson_handler(1, KeyError("oops")),
            "/api/early": ndjson_handler(0, ServerBusy("queue full")),
            "/v1/ok": sse_handler(99, RuntimeError()),
            "/v1/late": sse_handler(1, ContextOverflow(10, 5, 12)),
        }
    )


def test_ndjson_is_one_object_per_line(results):
    status, ctype, body = results["/api/ok"]
    assert status == 200 and ctype == "application/x-ndjson"
    assert [json.loads(line) for line in body.decode().splitlines()] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert body.endswith(b"\n") and b"\n\n" not in body


def test_a_failure_after_the_first_byte_ends_the_stream_with_an_error_line(results):
    status, _, body = results["/api/late"]
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert status == 200 and lines[:2] == [{"n": 0}, {"n": 1}] and "context size" in lines[-1]["error"]
    status, _, body = results["/api/bug"]
    last = json.loads(body.decode().splitlines()[-1])
    assert (
        status == 200
        and last["error"].startswith("internal error: KeyError")
        and "Traceback" not in body.decode()
    )


def test_a_failure_before_the_first_byte_gets_its_status(results):
    status, ctype, body = results["/api/early"]
    assert (
        status == 503 and ctype.startswith("application/json") and json.loads(body) == {"error": "queue full"}
    )


def test_sse_frames_end_with_done_or_an_error_event(results):
    status, ctype, body = results["/v1/ok"]
    events = body.decode().split("\n\n")
    assert status == 200 and ctype == "text/event-stream"
    assert all(e.startswith("data: ") for e in events if e) and events[-2] == "data: [DONE]"
    _, _, body = results["/v1/late"]
    events = [e for e in body.decode().split("\n\n") if e]
    assert json.loads(events[-1].removeprefix("data: "))["error"]["message"].startswith("prompt of 10")
    assert "[DONE]" not in body.decode()
