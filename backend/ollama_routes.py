"""Ollama's native API (/api/*) translated to and from the engine's request and chunk types."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from nanocommander.backend.config import parse_duration
from nanocommander.backend.server import MANAGER, VERSION, read_json
from nanocommander.backend.streaming import ndjson, stream_response
from nanocommander.backend.translate import describe, grammar_for_format, make_request, size_label
from nanocommander.engine.types import Chunk

from nanocommander.errors import InvalidRequest, ModelNotFound


def now_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts or time.time(), tz=timezone.utc).astimezone().isoformat()


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _str(body: dict, key: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidRequest(f'"{key}" must be a string')
    return value


def _model_name(body: dict) -> str:
    return _str(body, "model") or _str(body, "name")


def _options(body: dict) -> dict[str, Any]:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidRequest('"options" must be an object')
    return options


def _keep_alive(body: dict) -> float | None:
    if body.get("keep_alive") is None:
        return None
    try:
        return parse_duration(body["keep_alive"], 300.0)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def final_fields(chunk: Chunk) -> dict[str, Any]:
    s = chunk.stats
    assert s is not None
    return {
        "done_reason": "stop" if chunk.done_reason and chunk.done_reason.value == "stop" else "length",
        "total_duration": ns(s.total_s + s.load_s),
        "load_duration": ns(s.load_s),
        "prompt_eval_count": s.prompt_tokens,
        "prompt_eval_duration": ns(s.prompt_eval_s),
        "eval_count": s.eval_count,
        "eval_duration": ns(s.eval_s),
    }


def details(info: dict[str, Any]) -> dict[str, Any]:
    large = info["members"].get("large", {})
    arch = large.get("architecture", "unknown")
    return {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": size_label(large.get("parameter_count", 0)),
        "quantization_level": large.get("quantization", "unknown"),
    }


async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    manager = request.app[MANAGER]
    name = _model_name(body)
    keep_alive = _keep_alive(body)
    prompt, raw = _str(body, "prompt"), bool(body.get("raw", False))
    if not prompt and not body.get("context"):
        if keep_alive == 0:  # Open WebUI's unload call
            await manager.unload(name) or manager.catalog.lookup(name)
            return web.json_response(
                {
                    "model": name,
                    "created_at": now_iso(),
                    "response": "",
                    "done": True,
                    "done_reason": "unload",
                }
            )
        loaded = await manager.get(name, keep_alive)
        return web.json_response(
            {"model": name, "created_at": now_iso(), "response": "", "done": True, "done_reason": "load"}
        )
    loaded = await manager.get(name, keep_alive)
    comp = loaded.composite
    options = _options(body)
    if raw:
        text = prompt
    else:
        messages = [{"role": "user", "content": prompt}]
        text = comp.chat_prompt(
            messages,
            system=_str(body, "system") or None,
            template=_str(body, "template") or None,
            num_predict=int(options.get("num_predict") or 0),
        )
    context = body.get("context") or []
    if not isinstance(context, list):
        raise InvalidRequest('"context" must be a list of token ids')
    ids = list(context) + comp.tokenize(text, add_bos=not context)
    req = make_request(comp.recipe, ids, options, grammar=grammar_for_format(body.get("format")))

    async def items() -> AsyncIterator[dict[str, Any]]:
        out_ids: list[int] = []
        async for chunk in manager.generate(loaded, req):
            out_ids += chunk.token_ids
            item = {"model": name, "created_at": now_iso(), "response": chunk.text, "done": chunk.done}
            if chunk.done:
                item.update(final_fields(chunk), context=ids + out_ids)
            yield item

    return await respond(
        request, body, items(), lambda parts: {**parts[-1], "response": "".join(p["response"] for p in parts)}
    )


async def chat(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    manager = request.app[MANAGER]
    name = _model_name(body)
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest('"messages" must be a list of objects')
    keep_alive = _keep_alive(body)
    if not messages and keep_alive == 0:
        await manager.unload(name)
        return web.json_response(
            {
                "model": name,
                "created_at": now_iso(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "unload",
            }
        )
    loaded = await manager.get(name, keep_alive)
    if not messages:
        return web.json_response(
            {
                "model": name,
                "created_at": now_iso(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "load",
            }
        )
    comp = loaded.composite
    options = _options(body)
    tools = body.get("tools") or None
    chat_messages = [
        {k: v for k, v in m.items() if k in ("role", "content", "tool_calls", "tool_call_id", "name")}
        for m in messages
    ]
    text = comp.chat_prompt(chat_messages, tools=tools, num_predict=int(options.get("num_predict") or 0))
    req = make_request(comp.recipe, text, options, grammar=grammar_for_format(body.get("format")))

    async def items() -> AsyncIterator[dict[str, Any]]:
        async for chunk in manager.generate(loaded, req):
            item = {
                "model": name,
                "created_at": now_iso(),
                "message": {"role": "assistant", "content": chunk.text},
                "done": chunk.done,
            }
            if chunk.done:
                item.update(final_fields(chunk))
            yield item

    return await respond(
        request,
        body,
        items(),
        lambda parts: {
            **parts[-1],
            "message": {"role": "assistant", "content": "".join(p["message"]["content"] for p in parts)},
        },
    )


async def respond(request: web.Request, body: dict, items: AsyncIterator[dict], fold) -> web.StreamResponse:
    """Stream NDJSON by default (Ollama's default), or fold the stream into one object."""
    if body.get("stream", True) is False:
        parts = [item async for item in items]
        return web.json_response(fold(parts))
    return await stream_response(
        request,
        items,
        content_type="application/x-ndjson",
        encode=ndjson,
        on_error=lambda msg: ndjson({"error": msg}),
    )


def model_entry(name: str, recipe, modified: float) -> dict[str, Any]:
    info = describe(recipe)
    return {
        "name": name,
        "model": name,
        "modified_at": now_iso(modified),
        "size": info["size"],
        "digest": info["digest"],
        "details": details(info),
        "composite": {"alpha": info["alpha"], "members": list(info["members"])},
    }


async def tags(request: web.Request) -> web.Response:
    entries = request.app[MANAGER].catalog.entries()
    return web.json_response({"models": [model_entry(n, r, m) for n, r, m in entries]})


async def show(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = _model_name(body)
    key, recipe = request.app[MANAGER].catalog.lookup(name)
    info = describe(recipe)
    large = info["members"].get("large", {})
    arch = large.get("architecture", "unknown")
    model_info = {
        "general.architecture": arch,
        "general.parameter_count": large.get("parameter_count", 0),
        f"{arch}.context_length": large.get("context_length"),
        "nanocommander.alpha": recipe.alpha,
    }
    params = "\n".join(f"{k} {v}" for k, v in recipe.parameters.items())
    template = (
        recipe.template
        if recipe.template not in ("large", "base", "tuned")
        else f"(chat template of {recipe.template})"
    )
    return web.json_response(
        {
            "modelfile": recipe.dump(),
            "parameters": params,
            "template": template,
            "system": recipe.system or "",
            "details": details(info),
            "model_info": model_info,
            "capabilities": ["completion", "tools"],
            "modified_at": now_iso(),
            "composite": {"alpha": recipe.alpha, "members": info["members"]},
        }
    )


async def ps(request: web.Request) -> web.Response:
    models = []
    for entry in request.app[MANAGER].ps():
        loaded, info = entry["loaded"], entry["info"]
        size = sum(m["size"] for m in info["members"].values())
        expires = loaded.expires_at if loaded.expires_at != float("inf") else time.time() + 10 * 365 * 86400
        models.append(
            {
                "name": loaded.name,
                "model": loaded.name,
                "size": size,
                "size_vram": 0,
                "digest": hashlib.sha256(loaded.name.encode()).hexdigest(),
                "expires_at": now_iso(expires),
                "details": details(info),
                "context_length": info["n_ctx"],
            }
        )
    return web.json_response({"models": models})


async def embed(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = _model_name(body)
    request.app[MANAGER].catalog.lookup(name)  # 404 for unknown models, as Ollama
    raise InvalidRequest(f'"{name}" does not support embeddings')


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})


def setup_routes(app: web.Application) -> None:
    from nanocommander.backend import registry_routes

    app.router.add_get("/", root)  # GET also answers HEAD
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/api/show", show)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embed)
    registry_routes.setup_routes(app)


__all__ = ["setup_routes", "ModelNotFound"]
