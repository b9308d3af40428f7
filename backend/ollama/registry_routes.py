"""Ollama's model-management endpoints over the registry: pull, push, create, copy, delete, blobs.

Pulls stream the registry's Ollama-shaped progress events as NDJSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from nanocommander.backend.app import MANAGER, read_json
from nanocommander.backend.streaming import ndjson, stream_response
from nanocommander.digest import hex_of
from nanocommander.engine.request.options import clean_options
from nanocommander.engine.request.recipe import Recipe, Source
from nanocommander.errors import InvalidRequest
from nanocommander.registry import Name, Registry
from nanocommander.registry.family import member_recipe


def _registry() -> Registry:
    return Registry()


def _name(body: dict) -> str:
    name = body.get("model") or body.get("name") or ""
    if not isinstance(name, str) or not name:
        raise InvalidRequest('"model" is required')
    return name


async def _events(gen: Iterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Run a blocking progress iterator on a thread, yielding its events as they come.

    When the consumer leaves early (client gone, server stopping), the thread closes `gen`,
    which cancels a pull at its next chunk (its resumable download stays in partial/).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    end, stop = object(), threading.Event()

    def put(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            for event in gen:
                if stop.is_set():
                    break
                put(event)
        except BaseException as exc:  # delivered to the consumer
            put(exc)
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()
            put(end)

    task = loop.run_in_executor(None, work)
    try:
        while (item := await queue.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
        await task
    finally:
        stop.set()


async def _progress(request: web.Request, body: dict, gen: Iterator[dict[str, Any]]) -> web.StreamResponse:
    if body.get("stream", True) is False:
        last: dict[str, Any] = {}
        async for event in _events(gen):
            last = event
        return web.json_response({"status": last.get("status", "success")})
    return await stream_response(
        request,
        _events(gen),
        content_type="application/x-ndjson",
        encode=ndjson,
        on_error=lambda msg: ndjson({"error": msg}),
    )


async def pull(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    return await _progress(request, body, _registry().pull(_name(body)))


async def push(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    target = body.get("destination") or body.get("target") or _name(body)
    return await _progress(request, body, _registry().push(_name(body), str(target)))


async def create(request: web.Request) -> web.StreamResponse:
    """Ollama's create: from a recipe (YAML text in `recipe`, or a server-side `path`), an existing
    model (`from`), or uploaded blobs (`files`: one GGUF makes a plain model, that file as all three
    members); `system`, `template`, `parameters` and `messages` override what it inherits."""
    body = await read_json(request)
    name = _name(body)
    if body.get("adapters") is not None:  # one more member of an adapter family (Ollama's adapters field)
        return await _progress(request, body, _create_member(request, name, body))
    if isinstance(body.get("recipe"), str) and body["recipe"]:
        recipe = Recipe.parse(body["recipe"], file="<request>", check_files=True)
    elif isinstance(body.get("path"), str) and body["path"]:
        recipe = Recipe.load(body["path"])
    elif isinstance(body.get("from"), str) and body["from"]:
        recipe = request.app[MANAGER].catalog.lookup(body["from"])[1]
    elif isinstance(body.get("files"), dict) and body["files"]:
        recipe = _from_files(body["files"])
    else:
        raise InvalidRequest(
            "neither 'from' or 'files' was specified (or 'recipe' YAML text, or a recipe 'path')"
        )
    events = _registry().create(name, recipe=_with_overrides(recipe, body))
    return await _progress(request, body, events)


def _create_member(request: web.Request, name: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`from` a composite plus `adapters` {"style.gguf": "sha256:..."} (an uploaded LoRA blob):
    the new composite shares the large and base of `from` and its tuned member is that adapter."""

    adapters = body["adapters"]
    if not isinstance(body.get("from"), str) or not body["from"]:
        raise InvalidRequest('"adapters" needs "from": the composite whose large and base the new one shares')
    if (
        not isinstance(adapters, dict)
        or len(adapters) != 1
        or not isinstance(next(iter(adapters.values())), str)
    ):
        raise InvalidRequest('"adapters" must name one LoRA blob: {"style.gguf": "sha256:..."}')
    path = _blob_path(next(iter(adapters.values())))
    if not path.exists():
        raise InvalidRequest(
            f"blob {next(iter(adapters.values()))} not found; upload it first with POST /api/blobs/<digest>"
        )
    family = request.app[MANAGER].catalog.lookup(body["from"])[1]
    recipe = member_recipe(family, Name.parse(name).model, Source(path=path))
    return _registry().create(name, recipe=_with_overrides(recipe, body))


def _from_files(files: dict[str, Any]) -> Recipe:
    ggufs = [(f, d) for f, d in files.items() if str(f).endswith(".gguf")]
    if len(ggufs) != 1 or not isinstance(ggufs[0][1], str):
        raise InvalidRequest('"files" must name exactly one .gguf blob ({"model.gguf": "sha256:..."})')
    path = _blob_path(ggufs[0][1])
    if not path.exists():
        raise InvalidRequest(f"blob {ggufs[0][1]} not found; upload it first with POST /api/blobs/<digest>")
    member = f"{{path: {json.dumps(str(path))}}}"
    text = f"name: uploaded\nmembers:\n  large: {member}\n  base: {member}\n  tuned: {member}\n"
    return Recipe.parse(text, file="<files>", check_files=True)


def _with_overrides(recipe: Recipe, body: dict[str, Any]) -> Recipe:
    changes: dict[str, Any] = {}
    for key in ("system", "template"):
        if body.get(key) is not None:
            if not isinstance(body[key], str):
                raise InvalidRequest(f'"{key}" must be a string')
            changes[key] = body[key]
    if body.get("parameters") is not None:
        if not isinstance(body["parameters"], dict):
            raise InvalidRequest('"parameters" must be an object')
        changes["parameters"] = {**recipe.parameters, **clean_options(body["parameters"])}
    if body.get("messages") is not None:
        messages = body["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise InvalidRequest('"messages" must be a list of {"role", "content"} strings')
        changes["messages"] = tuple({"role": m["role"], "content": m["content"]} for m in messages)
    return dataclasses.replace(recipe, **changes) if changes else recipe


async def copy(request: web.Request) -> web.Response:
    body = await read_json(request)
    source, dest = body.get("source"), body.get("destination")
    if not isinstance(source, str) or not isinstance(dest, str):
        raise InvalidRequest('"source" and "destination" are required')
    manager = request.app[MANAGER]
    key, recipe = manager.catalog.lookup(source)
    if key in manager.catalog.recipes:  # a command-line recipe: register it under the new name
        for _event in _registry().create(dest, recipe=recipe):
            pass
    else:
        _registry().copy(source, dest)
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = _name(body)
    manager = request.app[MANAGER]
    key, _ = manager.catalog.lookup(name)  # 404 for a model that does not exist at all
    if key in manager.catalog.recipes:
        raise InvalidRequest(
            f"{key} is served from a recipe file named on the command line; it is not in the store"
        )
    await manager.unload(name)
    _registry().delete(name)
    return web.Response(status=200)


def _blob_path(digest: str) -> Path:
    if hex_of(digest) is None:
        raise InvalidRequest(f"invalid digest {digest!r}; expected sha256:<64 hex>")
    return _registry().store.blob_path(digest)


async def blob_head(request: web.Request) -> web.Response:
    path = _blob_path(request.match_info["digest"])
    if not path.exists():
        return web.json_response({"error": f'blob "{request.match_info["digest"]}" not found'}, status=404)
    return web.Response(status=200)


async def blob_post(request: web.Request) -> web.Response:
    _blob_path(request.match_info["digest"])  # a malformed digest is a 400 before any byte is read
    with _registry().store.writer(request.match_info["digest"]) as blob:
        async for data in request.content.iter_chunked(1 << 20):
            blob.write(data)
        blob.commit()
    return web.Response(status=201)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/push", push)
    app.router.add_post("/api/create", create)
    app.router.add_post("/api/copy", copy)
    app.router.add_delete("/api/delete", delete)
    app.router.add_route("HEAD", "/api/blobs/{digest}", blob_head)
    app.router.add_post("/api/blobs/{digest}", blob_post)
