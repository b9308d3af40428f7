"""Graceful shutdown: on SIGTERM every request still running ends with its protocol's error object.

The middleware registers each handler's task while it runs. When the server stops
(`AppRunner.cleanup`: listening sockets close first, then `on_shutdown`), the hook
marks the app as stopping and cancels those tasks. A stream that already started
catches the cancellation and writes its protocol's error object as its last line
(streaming.py); a request whose answer has not started gets a 503 in its protocol's
envelope (server.py). Cancelling a generation stops it within one token; a pull stops
at its next chunk and keeps its resumable download in `partial/`; an upload removes
its temp file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web

MESSAGE = "server is shutting down; the request was stopped, send it again when the server is back"


@dataclass
class Draining:
    """Whether the app is stopping, and the handler tasks to stop when it does."""

    stopping: bool = False
    tasks: set[asyncio.Task] = field(default_factory=set)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self.tasks.discard(task)

    def stop(self) -> None:
        self.stopping = True
        for task in list(self.tasks):
            task.cancel()


DRAINING = web.AppKey("draining", Draining)


def is_stopping(request: web.Request) -> bool:
    """True when a CancelledError in this request's handler means the server is stopping."""
    draining = request.app.get(DRAINING)
    return bool(draining and draining.stopping)


def absorb_cancel() -> None:
    """Undo the shutdown's cancel of the current task so the handler can still write its error."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):  # Python >= 3.11
        task.uncancel()


async def on_shutdown(app: web.Application) -> None:
    app[DRAINING].stop()
    await asyncio.sleep(0)  # let the cancelled handlers run to their error objects


def setup(app: web.Application) -> None:
    app[DRAINING] = Draining()
    app.on_shutdown.append(on_shutdown)
