"""A live NanoCommander server on loopback (its own thread and event loop) over the tiny models."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from aiohttp import web

from nanocommander.backend.config import Settings
from nanocommander.backend.server import create_app
from nanocommander.engine.request.recipe import Recipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, settings: Settings, recipes: list[Recipe]):
        self.settings, self.recipes = settings, recipes
        self.url = f"http://127.0.0.1:{settings.port}"
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
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


# An inline chat template that renders tools (ChatML plus a tools block), a system prompt and parameters.
TOOLS_EXTRA = """system: You are terse.
parameters: {temperature: 0, stop: ["<|im_end|>"], num_ctx: 1024}
template: |-
  {% if tools %}<|im_start|>system
  Tools: {{ tools | tojson }}<|im_end|>
  {% endif %}{% for message in messages %}<|im_start|>{{ message['role'] }}
  {{ message['content'] }}<|im_end|>
  {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
  {% endif %}
"""


def tiny_recipe(tiny, name: str, *, adapter: bool = False, alpha: float = 1.0, extra: str = "") -> Recipe:
    tuned = f"{{adapter: {tiny['lora']}}}" if adapter else f"{{path: {tiny['tuned']}}}"
    return Recipe.parse(
        f"name: {name}\nmembers:\n  large: {{path: {tiny['large']}}}\n  base: {{path: {tiny['base']}}}\n"
        f"  tuned: {tuned}\nalpha: {alpha}\n{extra}",
        check_files=True,
    )


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("NANOCOMMANDER_MODELS", str(tmp_path_factory.mktemp("store")))
    settings = Settings(port=free_port(), max_body=64 * 1024, keep_alive=300, max_queue=16)
    recipes = [
        tiny_recipe(tiny, "tiny", extra="parameters: {num_ctx: 1024}\n"),
        tiny_recipe(tiny, "tiny-lora", adapter=True),
        tiny_recipe(tiny, "tiny-tools", alpha=0.5, extra=TOOLS_EXTRA),
    ]
    live = LiveServer(settings, recipes).start()
    yield live
    live.stop()
    mp.undo()


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """Start extra live servers for one module (own settings and recipes); all stop at its end."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NANOCOMMANDER_MODELS", str(tmp_path_factory.mktemp("store")))
    started: list[LiveServer] = []

    def start(recipes: list[Recipe], **settings) -> LiveServer:
        live = LiveServer(Settings(port=free_port(), **settings), recipes).start()
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()
    mp.undo()


@pytest.fixture(scope="module")
def recipe_of(tiny):
    """tiny_recipe bound to the session's tiny models."""
    return lambda name, **kw: tiny_recipe(tiny, name, **kw)
