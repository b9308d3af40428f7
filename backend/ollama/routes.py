"""Ollama's native API (/api/*): thin handlers over ollama_api's pure translators and the manager."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from nanocommander.backend import embed_api, tools
from nanocommander.backend.app import MANAGER, VERSION, read_json
from nanocommander.backend.manager import Loaded
from nanocommander.backend.ollama import api as wire
from nanocommander.backend.ollama import registry_routes
from nanocommander.backend.prepare import Chat, prepare
from nanocommander.backend.streaming import ndjson, stream_response
from nanocommander.backend.translate import describe
from nanocommander.engine.llama import determinism
from nanocommander.engine.llama.embed import finish
from nanocommander.engine.request.options import LoadOptions
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.memory import estimate_family
from nanocommander.registry import estimate_memory


async def _lifecycle(
    request: web.Request, model: str, keep_alive: float | None, *, chat: bool
) -> web.Response:
    """An empty prompt loads the model; with keep_alive 0 it unloads it (Open WebUI's unload call)."""
    manager = request.app[MANAGER]
    if keep_alive == 0:
        if not await manager.unload(model):
            manager.catalog.lookup(model)  # 404 for a model that does not exist at all
        return web.json_response(wire.lifecycle_item(model, "unload", chat=chat))
    await manager.get(model, keep_alive)
    return web.json_response(wire.lifecycle_item(model, "load", chat=chat))


async def generate(request: web.Request) -> web.StreamResponse:
    call = wire.parse_generate(await read_json(request))
    if call.lifecycle:
        return await _lifecycle(request, call.model, call.keep_alive, chat=False)
    manager = request.app[MANAGER]
    t0 = time.perf_counter()
    loaded = await manager.get(call.model, call.keep_alive)
    load_s = time.perf_counter() - t0  # the load, on the reply that loaded the model; ~0 when warm
    comp = loaded.composite
    # raw: the prompt as it is; else one user turn through the chat template, as Ollama wraps it
    prompt = (
        call.prompt
        if call.raw
        else Chat(
            [{"role": "user", "content": call.prompt}],
            system=call.system,
            template=call.template,
            context=tuple(call.context),
        )
    )
    req = await prepare(comp, prompt, call.options, grammar=call.grammar)
    ids = list(req.prompt)
    req = tools.logprobs_request(req, call.logprobs, call.top_logprobs, call.logprobs_member)

    async def items() -> AsyncIterator[dict[str, Any]]:
        out: list[int] = []
        async for chunk in manager.generate(loaded, req, load_s):
            out += chunk.token_ids
            yield wire.generate_item(call.model, chunk, None if call.raw else ids + out)

    return await _respond(request, call.stream, items(), wire.fold_generate)


async def chat(request: web.Request) -> web.StreamResponse:
    call = wire.parse_chat(await read_json(request))
    if not call.messages:
        return await _lifecycle(request, call.model, call.keep_alive, chat=True)
    manager = request.app[MANAGER]
    t0 = time.perf_counter()
    loaded = await manager.get(call.model, call.keep_alive)
    load_s = time.perf_counter() - t0  # the load, on the reply that loaded the model; ~0 when warm
    req, plan = await _chat_request(loaded, call)

    async def items() -> AsyncIterator[dict[str, Any]]:
        n_calls = 0
        async for chunk, calls in tools.split(manager.generate(loaded, req, load_s), plan):
            yield wire.chat_item(call.model, chunk, calls, first_call=n_calls)
            n_calls += len(calls)

    return await _respond(request, call.stream, items(), wire.fold_chat)


async def _chat_request(loaded: Loaded, call: wire.ChatCall) -> tuple[GenerateRequest, tools.ToolPlan]:
    comp = loaded.composite
    offered = list(call.tools) if call.tools else None
    plan = tools.plan(comp.template.source, comp.recipe.tool_parser, offered, call.tool_choice)
    req = await prepare(comp, Chat(list(call.messages), tools=offered), call.options, grammar=call.grammar)
    req = tools.logprobs_request(req, call.logprobs, call.top_logprobs, call.logprobs_member)
    return plan.apply(req), plan


async def _respond(
    request: web.Request,
    stream: bool,
    items: AsyncIterator[dict[str, Any]],
    fold: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> web.StreamResponse:
    """NDJSON by default (Ollama's default), or the stream folded into one object."""
    if not stream:
        return web.json_response(fold([item async for item in items]))
    return await stream_response(
        request,
        items,
        content_type="application/x-ndjson",
        encode=ndjson,
        on_error=lambda msg: ndjson(wire.error_body(500, msg)),
    )


async def tags(request: web.Request) -> web.Response:
    def listing() -> list[dict[str, Any]]:  # store and GGUF header reads: off the event loop
        return [wire.tag_entry(n, describe(r), m) for n, r, m in request.app[MANAGER].catalog.entries()]

    return web.json_response({"models": await asyncio.to_thread(listing)})


async def show(request: web.Request) -> web.Response:
    body = await read_json(request)
    key, recipe = await asyncio.to_thread(request.app[MANAGER].catalog.lookup, wire.model_name(body))
    described = await asyncio.to_thread(describe, recipe)
    slots = request.app[MANAGER].settings.num_parallel
    memory = await asyncio.to_thread(_memory, recipe, slots)  # header reads: off the event loop
    members = described["members"]
    large = members.get("large", {})
    arch = large.get("architecture") or "unknown"
    model_info = {
        "general.architecture": arch,
        "general.parameter_count": large.get("parameter_count", 0),
        f"{arch}.context_length": large.get("context_length"),
        f"{arch}.embedding_length": large.get("embedding_length"),
        "nanocommander.alpha": recipe.alpha,
        "nanocommander.members": sorted(members),
    }
    inline = recipe.template not in ("large", "base", "tuned")
    template = recipe.template if inline else _member_template(members.get(recipe.template, {}))
    return web.json_response(
        {
            "license": recipe.license or "",
            "modelfile": recipe.dump(),
            "parameters": wire.parameters_text(recipe.parameters),
            "template": template,
            "system": recipe.system or "",
            "details": wire.details(members),
            "messages": [dict(m) for m in recipe.messages],
            "model_info": {k: v for k, v in model_info.items() if v is not None},
            "capabilities": wire.capabilities(template),
            "modified_at": wire.now_iso(),
            "composite": {
                **wire.composite_object(recipe.alpha, members),
                "memory": memory,
                "deterministic": determinism.describe(
                    bool(LoadOptions.from_parameters(recipe.parameters).deterministic)
                ),
            },
        }
    )


def _memory(recipe: Any, num_parallel: int | None) -> dict[str, Any] | None:
    """The registry's memory estimate (weights + KV cache per member); None where a header does not read."""
    try:
        return estimate_memory(recipe, num_parallel=num_parallel).to_dict()
    except (ValueError, OSError):
        return None


def _member_template(member: dict[str, Any]) -> str:
    return str(member.get("chat_template") or "")


async def ps(request: web.Request) -> web.Response:
    """One entry per loaded composite, with its slots and KV cache; an adapter family is one entry
    (named by its most recently used member) whose `family` object lists its members, loaded
    adapters and tuned contexts, and whose size is the family's estimate."""

    def listing() -> list[dict[str, Any]]:  # GGUF header reads: off the event loop
        models = []
        for group, family in request.app[MANAGER].units():
            latest = max(group, key=lambda m: m.last_used)
            comp = latest.composite
            described = describe(comp.recipe)
            extra = None
            if family is not None:
                extra = family.info({m.composite: m.name for m in group})
                contexts = len(extra["tuned_contexts"])
                extra["memory"] = _family_memory(comp.recipe, extra["adapters"], contexts, comp.n_parallel)
                if extra["memory"] is not None:
                    described = {**described, "size": extra["memory"]["total"]}
            expires = max(m.expires_at for m in group)
            entry = wire.ps_entry(latest.name, described, expires, comp.n_ctx, extra)
            entry.update(_runner_facts(comp))
            memory = _memory(comp.recipe, comp.n_parallel)  # num_ctx of KV per slot
            entry["composite"] = {
                "num_parallel": comp.n_parallel,
                "active": len(comp.scheduler.active()),
                "deterministic": determinism.describe(_deterministic(comp)),
                "kv_cache": memory
                and {
                    "formula": memory["kv_formula"],
                    "bytes": {role: m["kv_cache"] for role, m in memory["members"].items()},
                },
            }
            models.append(entry)
        return sorted(models, key=lambda m: m["expires_at"], reverse=True)

    return web.json_response({"models": await asyncio.to_thread(listing)})


def _deterministic(comp: Any) -> bool:
    """Whether a loaded composite runs in reproducible mode; one in a runner process holds no core
    here, so its recipe's setting (what the runner loaded it with) answers."""
    core = getattr(comp, "core", None)
    if core is not None:
        return bool(core.deterministic)
    return bool(LoadOptions.from_parameters(comp.recipe.parameters).deterministic)


def _family_memory(
    recipe: Any, adapters: list[str], contexts: int, num_parallel: int
) -> dict[str, Any] | None:
    """Shared large and base weights and contexts + the adapters loaded + the tuned contexts."""
    try:
        paths = [Path(a) for a in adapters]
        return estimate_family(recipe, paths, contexts, num_parallel=num_parallel).to_dict()
    except (ValueError, OSError):  # a header that does not read
        return None


def _runner_facts(comp: Any) -> dict[str, Any]:
    """`runner_pid` (None: served in the server's process) and the runner's resident memory and uptime."""
    runner = getattr(comp, "runner", None)
    if runner is None:
        return {"runner_pid": None}
    uptime = round(time.time() - runner.started_at, 1)
    return {"runner_pid": runner.pid, "runner": {"pid": runner.pid, "rss": runner.rss(), "uptime_s": uptime}}


async def embed(request: web.Request) -> web.Response:
    """/api/embed: normalised vectors of each input, from the large member (or the recipe's `embedding`)."""
    call = embed_api.parse_ollama(await read_json(request))
    return web.json_response(await _embed(request, call))


async def embeddings(request: web.Request) -> web.Response:
    """/api/embeddings (legacy): one prompt, one raw vector."""
    call = embed_api.parse_ollama(await read_json(request), legacy=True)
    return web.json_response(await _embed(request, call))


async def _embed(request: web.Request, call: embed_api.EmbedCall) -> dict[str, Any]:

    t0 = time.perf_counter()
    manager = request.app[MANAGER]
    loaded = await manager.get(call.model, call.keep_alive)
    embedder = await manager.embedder(loaded)
    load_s = time.perf_counter() - t0
    vectors, n_tokens = await asyncio.to_thread(embedder.embed, call.inputs, truncate=call.truncate)
    vectors = finish(vectors, dimensions=call.dimensions, normalize=not call.legacy)
    return embed_api.ollama_response(call, vectors.tolist(), n_tokens, time.perf_counter() - t0, load_s)


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})


def setup_routes(app: web.Application) -> None:

    app.router.add_get("/", root)  # add_get also answers HEAD
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/api/show", show)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embeddings)
    registry_routes.setup_routes(app)
