"""`nanocommander serve`: the Ollama/OpenAI/KoboldCpp-compatible server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

from aiohttp import web
from tqdm import tqdm

from nanocommander.backend import accesslog
from nanocommander.backend.config import Settings, parse_host
from nanocommander.backend.server import MANAGER, create_app
from nanocommander.backend.translate import describe
from nanocommander.engine.llama import log as llamalog
from nanocommander.engine.llama.rpc import devices as rpc
from nanocommander.engine.request.recipe import Recipe
from nanocommander.registry import Registry, estimate_memory

SHUTDOWN_S = 3.0  # how long a stop waits for running handlers after telling them to end


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve models over the Ollama, OpenAI and KoboldCpp APIs")
    p.add_argument("recipes", nargs="*", help="recipe YAML files to serve besides the store's models")
    p.add_argument("--host", help="host[:port] to listen on (default 127.0.0.1:11434, or NANOCOMMANDER_HOST)")
    p.add_argument("--kobold-port", type=int, help="also listen on this port (KoboldCpp's default is 5001)")
    p.add_argument("--default-model", help="the model Kobold clients get (they name none)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="log request bodies and llama.cpp's own log lines too (also NANOCOMMANDER_DEBUG=1); one line per request is always logged",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow binding beyond loopback without NANOCOMMANDER_API_KEY",
    )
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:

    accesslog.configure(verbose=args.verbose or accesslog.debug_from_env())
    if args.verbose:
        llamalog.install(True)
    host, port = parse_host(args.host) if args.host else (None, None)
    settings = Settings.from_env(
        host=host,
        port=port,
        kobold_port=args.kobold_port,
        default_model=args.default_model,
        insecure_no_auth=args.insecure_no_auth or None,
    )
    settings.check()
    recipes = [_local(Recipe.load(path), path) for path in args.recipes]
    asyncio.run(run_server(settings, recipes))
    return 0


async def run_server(settings: Settings, recipes) -> None:

    app = create_app(settings, recipes)
    # SIGTERM/SIGINT: stop listening, end running requests with their protocol's error object
    # (backend/shutdown.py), unload the models, exit; SHUTDOWN_S bounds the wait for handlers.
    # A short lingering time: an upload cut by a stop is not read on for aiohttp's default 10 s.
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,  # accesslog.py logs requests
        shutdown_timeout=SHUTDOWN_S,
        lingering_time=1.0,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ports = [settings.port] + ([settings.kobold_port] if settings.kobold_port else [])
    for port in ports:
        await web.TCPSite(runner, settings.host, port).start()
    names = ", ".join(r.name for r in recipes) or "the store's models"
    apis = "Ollama /api, OpenAI /v1, KoboldCpp /api/v1 and /api/extra"
    for port in ports:
        role = "the --kobold-port; the same APIs" if port == settings.kobold_port else apis
        print(
            f"nanocommander listening on http://{settings.host}:{port} ({role})", file=sys.stderr, flush=True
        )
    default = app[MANAGER].default_name()
    print(
        f"serving {names}" + (f"; Kobold clients get {default}" if default else ""),
        file=sys.stderr,
        flush=True,
    )
    warm = asyncio.create_task(asyncio.to_thread(_warm_headers, app[MANAGER].catalog))
    try:
        await stop.wait()
        print("nanocommander: shutting down", file=sys.stderr, flush=True)
    finally:
        warm.cancel()
        await runner.cleanup()
        if rpc.stranded():  # threads parked on a lost RPC server would keep the interpreter from exiting
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def _warm_headers(catalog) -> None:
    """Read every model's GGUF headers once at start, so the first /v1/models and /api/show are quick."""

    for _, recipe, _ in catalog.entries():
        with contextlib.suppress(Exception):
            describe(recipe)
            estimate_memory(recipe)


def _local(recipe, path: str):
    """A recipe whose members are on the Hub is pulled into the store first (with progress), then served."""
    if all(m.source is None or m.source.path is not None for m in recipe.members) and (
        recipe.tuned.adapter is None or recipe.tuned.adapter.path is not None
    ):
        return recipe

    registry = Registry()
    bars: dict[str, tqdm] = {}
    for event in registry.pull(path):
        if "total" in event and event.get("digest"):
            bar = bars.get(event["digest"]) or bars.setdefault(
                event["digest"],
                tqdm(total=event["total"], unit="B", unit_scale=True, desc=event["status"], file=sys.stderr),
            )
            bar.update(event.get("completed", 0) - bar.n)
        else:
            print(event.get("status", ""), file=sys.stderr)
    for bar in bars.values():
        bar.close()
    return registry.resolve(recipe.name)
