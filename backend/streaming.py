"""Writing streams: NDJSON (Ollama) and SSE (OpenAI, KoboldCpp), one object per write, flushed per token.

The first item is fetched before the response starts, so early failures (unknown
model, bad options) still get a proper status; a failure after that ends the
stream with an error object. A client that goes away stops the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from nanocommander.backend.shutdown import MESSAGE, absorb_cancel, is_stopping
from nanocommander.errors import NanoCommanderError

log = logging.getLogger("nanocommander.server")


async def _first(items: AsyncIterator[Any]) -> tuple[bool, Any]:
    try:
        return True, await items.__anext__()
    except StopAsyncIteration:
        return False, None


async def stream_response(
    request: web.Request,
    items: AsyncIterator[Any],
    *,
    content_type: str,
    encode: Callable[[Any], bytes],
    on_error: Callable[[str], bytes],
    trailer: bytes = b"",
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    has_first, first = await _first(items)
    response = web.StreamResponse(
        headers={"Content-Type": content_type, "Cache-Control": "no-cache", **(headers or {})}
    )
    await response.prepare(request)
    try:
        if has_first:
            await response.write(encode(first))
            async for item in items:
                await response.write(encode(item))
        if trailer:
            await response.write(trailer)
    except (ConnectionResetError, ConnectionError):
        pass  # client went away; closing `items` below cancels the generation
    except asyncio.CancelledError:
        if not is_stopping(request):
            raise  # the client went away
        absorb_cancel()  # SIGTERM: the stream's last line is its protocol's error object
        with contextlib.suppress(ConnectionError):
            await response.write(on_error(MESSAGE))
    except NanoCommanderError as exc:
        await response.write(on_error(str(exc)))
    except Exception as exc:  # a bug after the first byte: still end with an error object, and log it
        log.exception("stream failed on %s", request.path)
        await response.write(on_error(f"internal error: {type(exc).__name__}: {exc}"))
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    return response


def ndjson(item: dict[str, Any]) -> bytes:
    return (json.dumps(item, ensure_ascii=False) + "\n").encode()


def sse(item: Any) -> bytes:
    return f"data: {json.dumps(item, ensure_ascii=False)}\n\n".encode()


async def merged(streams: list[AsyncIterator[Any]], ahead: int = 8) -> AsyncIterator[tuple[int, Any]]:
    """Run several streams at once and yield (stream index, item) as items come.

    OpenAI's `n` samples go through this: running together, the scheduler batches them in the
    same rounds instead of one after another. Each stream may run `ahead` items before its
    reader, so a slow client still pauses the generation; the first error ends them all, and
    leaving early closes every stream (which cancels its generation).
    """
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None, bool]] = asyncio.Queue(
        maxsize=ahead * len(streams)
    )

    async def pump(i: int, stream: AsyncIterator[Any]) -> None:
        try:
            async for item in stream:
                await queue.put((i, item, None, False))
            await queue.put((i, None, None, True))
        except Exception as exc:  # delivered to the reader, who raises it
            await queue.put((i, None, exc, True))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    left = len(tasks)
    try:
        while left:
            i, item, error, done = await queue.get()
            if error is not None:
                raise error
            if done:
                left -= 1
                continue
            yield i, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for stream in streams:
            with contextlib.suppress(BaseException):
                await stream.aclose()  # type: ignore[attr-defined]
