"""Helpers the tests share: a free loopback port, recipe YAML over the tiny models, a live server.

Importable from every test module (tests/conftest.py puts this folder on sys.path).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it; another process may take it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe_yaml(
    tiny: Mapping[str, Path],
    name: str = "tiny",
    *,
    large: str = "large",
    base: str = "base",
    tuned: str = "tuned",
    adapter: bool = False,
    alpha: float = 1.0,
    extra: str = "",
) -> str:
    """A recipe over the tiny models (keys of the `tiny` fixture); `adapter` makes tuned the base's LoRA."""
    tuned_part = f"{{adapter: {tiny['lora']}}}" if adapter else f"{{path: {tiny[tuned]}}}"
    return (
        f"name: {name}\nmembers:\n  large: {{path: {tiny[large]}}}\n  base: {{path: {tiny[base]}}}\n"
        f"  tuned: {tuned_part}\nalpha: {alpha}\n{extra}"
    )


class LiveServer:
    """A NanoCommander server on loopback in its own thread and event loop (real aiohttp, real sockets)."""

    def __init__(self, settings, recipes):
        self.settings, self.recipes = settings, recipes
        self.url = f"http://127.0.0.1:{settings.port}"
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from nanocommander.backend.server import create_app

        asyncio.set_event_loop(self.loop)
        self.app = create_app(self.settings, self.recipes)
        self.runner = web.AppRunner(self.app, handler_cancellation=True)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, self.settings.host, self.settings.port).start())
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> LiveServer:
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
