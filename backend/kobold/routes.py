"""KoboldCpp's API (/api/v1, /api/extra, /props) so SillyTavern and KoboldAI Lite drive composites.

Kobold clients name no model: the server's default model answers (see
ModelManager.default_name); KoboldCpp's admin model list (/api/admin/list_options)
names every model, and /api/admin/reload_config switches the default. Generations are tracked by `genkey` so Lite can poll
and abort them; abort and token counting answer while a generation runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from nanocommander.backend import provenance
from nanocommander.backend.app import MANAGER, read_json
from nanocommander.backend.generations import GENERATIONS, Generation, Generations
from nanocommander.backend.kobold.api import context_limit, fit_context, kobold_options, lenient
from nanocommander.backend.manager import Loaded
from nanocommander.backend.prepare import prepare
from nanocommander.backend.streaming import stream_response
from nanocommander.engine.request.options import LoadOptions
from nanocommander.engine.request.types import Chunk, DoneReason
from nanocommander.errors import InvalidRequest, ModelNotFound

KCPP_VERSION = "1.76"  # unlocks stop sequences, token counting, abort, SSE streaming, grammar


def _gens(request: web.Request) -> Generations:
    return request.app[GENERATIONS]


async def _loaded(request: web.Request) -> Loaded:
    manager = request.app[MANAGER]
    name = manager.default_name()
    if not name:
        raise ModelNotFound("(no model loaded)")
    return await manager.get(name)


def _max_ctx(request: web.Request) -> int:
    manager = request.app[MANAGER]
    name = manager.default_name()
    loaded = manager.loaded.get(name or "")
    if loaded:
        return loaded.composite.n_ctx
    if name:
        return LoadOptions.from_parameters(manager.catalog.lookup(name)[1].parameters).num_ctx
    return LoadOptions.num_ctx


async def _run(request: web.Request, body: dict[str, Any]) -> tuple[Generation, AsyncIterator[Chunk], Loaded]:
    loaded = await _loaded(request)
    comp = loaded.composite
    body = lenient(body)
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise InvalidRequest('"prompt" must be a string')
    memory = body.get("memory") if isinstance(body.get("memory"), str) else ""
    options = kobold_options(body)
    grammar = options.pop("grammar", None)
    limit = context_limit(body, comp.n_ctx)

    def fit(ids: list[int], opts: dict[str, Any]) -> list[int]:
        keep = len(comp.tokenize(memory)) if memory else 1  # BOS and memory are never cut
        return fit_context(ids, opts, limit, keep)

    req = await prepare(
        comp,
        memory + prompt,
        options,
        grammar=grammar,
        fit=fit,
        ignore_eos=any(body.get(k) for k in ("ban_eos_token", "use_default_badwordsids", "bypass_eos")),
        trim_stop=body.get("trim_stop", True) is not False,
    )
    gen, chunks = _gens(request).start(request.app[MANAGER], loaded, req, body.get("genkey"))
    return gen, chunks, loaded


def finish_reason(chunk: Chunk | None) -> str:
    """KoboldCpp's finish reason: stop for an end token or a stop string; length at the limit or on abort."""
    return "stop" if chunk is not None and chunk.done_reason == DoneReason.STOP else "length"


async def generate(request: web.Request) -> web.Response:
    body = await read_json(request)
    gen, chunks, _ = await _run(request, body)
    every = [c async for c in chunks]
    last = every[-1] if every else None  # the last chunk carries the reason and stats
    stats = last.stats if last is not None and last.stats else None
    result = provenance.place({"text": gen.text, "finish_reason": finish_reason(last)}, every)
    if stats:
        result.update(prompt_tokens=stats.prompt_tokens, completion_tokens=stats.eval_count)
    return web.json_response({"results": [result]})


async def generate_stream(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    gen, chunks, _ = await _run(request, body)

    def encode(chunk: Chunk) -> bytes:
        reason = finish_reason(chunk) if chunk.done else None
        payload = json.dumps(
            provenance.place({"token": chunk.text, "finish_reason": reason}, [chunk]), ensure_ascii=False
        )
        return f"event: message\ndata: {payload}\n\n".encode()

    return await stream_response(
        request,
        chunks,
        content_type="text/event-stream",
        encode=encode,
        on_error=lambda msg: f"event: error\ndata: {json.dumps({'msg': msg})}\n\n".encode(),
        headers={"X-Accel-Buffering": "no"},
    )


def _genkey(body: dict[str, Any]) -> str | None:
    key = body.get("genkey")
    if key is not None and not isinstance(key, str):
        raise InvalidRequest('"genkey" must be a string')
    return key


async def check(request: web.Request) -> web.Response:
    body = await read_json(request) if request.method == "POST" else {}
    gen = _gens(request).find(_genkey(body))
    return web.json_response({"results": [{"text": gen.text if gen else ""}]})


async def abort(request: web.Request) -> web.Response:
    try:
        body = await read_json(request)
    except InvalidRequest:
        body = {}
    gen = _gens(request).find(_genkey(body))
    if gen is None or gen.done:
        return web.json_response({"success": "false", "done": "false"})
    gen.abort.set()
    return web.json_response({"success": "true", "done": "true"})


async def tokencount(request: web.Request) -> web.Response:
    body = await read_json(request)
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        return web.json_response({"value": -1}, status=400)
    loaded = await _loaded(request)
    ids = loaded.composite.tokenize(prompt, add_bos=body.get("special", True) is not False)
    return web.json_response({"value": len(ids), "ids": ids})


async def detokenize(request: web.Request) -> web.Response:
    body = await read_json(request)
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        return web.json_response({"result": "", "success": False}, status=400)
    loaded = await _loaded(request)
    if not all(0 <= i < loaded.composite.vocab.n_vocab for i in ids):  # llama.cpp aborts on a bad id
        return web.json_response({"result": "", "success": False}, status=400)
    return web.json_response({"result": loaded.composite.detokenize(ids), "success": True})


async def model(request: web.Request) -> web.Response:
    name = request.app[MANAGER].default_name()
    return web.json_response({"result": f"koboldcpp/{name}" if name else "inactive"})


async def list_options(request: web.Request) -> web.Response:
    """KoboldCpp's model list (admin mode): every model this server can answer with."""

    def names() -> list[str]:  # reads the store: off the event loop
        return [name for name, _, _ in request.app[MANAGER].catalog.entries()]

    return web.json_response(await asyncio.to_thread(names))


async def reload_config(request: web.Request) -> web.Response:
    """KoboldCpp's model switch: later Kobold requests (which name no model) go to `filename`."""
    body = await read_json(request)
    name = body.get("filename")
    if not isinstance(name, str) or not name:
        raise InvalidRequest('"filename" must name a model from /api/admin/list_options')
    manager = request.app[MANAGER]
    key, _ = await asyncio.to_thread(manager.catalog.lookup, name)  # 404 for an unknown model
    manager.settings.default_model = key
    return web.json_response({"success": True})


async def extra_version(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "result": "KoboldCpp",
            "version": KCPP_VERSION,
            "protected": False,
            "llm": True,
            "txt2img": False,
            "vision": False,
            "transcribe": False,
            "multiplayer": False,
            "websearch": False,
            "tts": False,
            "embeddings": False,
            "jinja": False,
        }
    )


async def perf(request: web.Request) -> web.Response:
    p, gen = _gens(request).perf, _gens(request).current
    busy = gen is not None and not gen.done
    return web.json_response(
        {
            **{
                "last_process": 0,
                "last_eval": 0,
                "last_token_count": 0,
                "last_input_count": 0,
                "stop_reason": -1,
            },
            **p.last,
            "total_gens": p.total_gens,
            "queue": 0,
            "idle": 0 if busy else 1,
            "uptime": time.time() - p.started,
        }
    )


def _value(fn):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"value": fn(request)})

    return handler


async def props(request: web.Request) -> web.Response:
    return web.json_response(
        {"default_generation_settings": {"n_ctx": _max_ctx(request)}, "total_slots": 1, "chat_template": ""}
    )


def setup_routes(app: web.Application) -> None:
    r = app.router
    for prefix in ("/api/v1", "/api/latest"):
        r.add_get(f"{prefix}/model", model)
        r.add_get(f"{prefix}/info/version", info_version)
        r.add_get(f"{prefix}/config/max_length", _value(lambda req: 1024))
        r.add_get(f"{prefix}/config/max_context_length", _value(_max_ctx))
        r.add_post(f"{prefix}/generate", generate)
    r.add_get("/api/admin/list_options", list_options)
    r.add_post("/api/admin/reload_config", reload_config)
    r.add_get("/api/extra/version", extra_version)
    r.add_get("/api/extra/true_max_context_length", _value(_max_ctx))
    r.add_post("/api/extra/generate/stream", generate_stream)
    r.add_get("/api/extra/generate/check", check)
    r.add_post("/api/extra/generate/check", check)
    r.add_post("/api/extra/abort", abort)
    r.add_post("/api/extra/tokencount", tokencount)
    r.add_post("/api/extra/tokenize", tokencount)
    r.add_post("/api/extra/detokenize", detokenize)
    r.add_get("/api/extra/perf", perf)
    r.add_get("/props", props)


async def info_version(request: web.Request) -> web.Response:
    return web.json_response({"result": "1.2.5"})
