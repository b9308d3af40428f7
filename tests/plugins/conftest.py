"""A live NanoCommander backend on loopback over the tiny models, for the plugin tests."""

from __future__ import annotations

import asyncio
import importlib
import threading

import pytest
from helpers import free_port


def backend_create_app():
    for name in ("nanocommander.backend.app", "nanocommander.backend.server"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "create_app"):
            return module.create_app
    return None


@pytest.fixture(scope="module")
def live_server(tiny, tmp_path_factory):
    create_app = backend_create_app()
    if create_app is None:
        pytest.skip("the NanoCommander backend (nanocommander.backend.*.create_app) is not importable yet")
    from aiohttp import web

    from nanocommander.backend.config import Settings
    from nanocommander.engine.request.recipe import Recipe

    mp = pytest.MonkeyPatch()
    mp.setenv("NANOCOMMANDER_MODELS", str(tmp_path_factory.mktemp("store")))
    recipe = Recipe.parse(
        f"name: tiny\nmembers:\n  large: {{path: {tiny['large']}}}\n  base: {{path: {tiny['base']}}}\n"
        f"  tuned: {{path: {tiny['tuned']}}}\nalpha: 1.0\n",
        check_files=True,
    )
    settings = Settings(port=free_port())
    loop, ready = asyncio.new_event_loop(), threading.Event()
    state = {}

    def run():
        asyncio.set_event_loop(loop)
        state["runner"] = runner = web.AppRunner(create_app(settings, [recipe]))
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", settings.port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield f"http://127.0.0.1:{settings.port}"
    asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    mp.undo()
