"""OpenAI-compatible endpoints (/v1/*): thin handlers over openai_api's pure translators.

`/v1/completions` also honours KoboldCpp's native sampler fields, because
SillyTavern's "KoboldCpp" text-completion type sends them there (and registers
the generation by genkey so /api/extra/abort reaches it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from nanocommander.backend import kobold_routes
from nanocommander.backend import openai_api as wire
from nanocommander.backend.kobold_fields import kobold_options, max_context
from nanocommander.backend.ollama_api import composite_object
from nanocommander.backend.server import MANAGER, read_json
from nanocommander.backend.streaming import sse, stream_response
from nanocommander.backend.translate import describe, make_request


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    name = wire.model_field(body)
    chat = wire.messages(body.get("messages"))
    options = wire.options(body)
    grammar, tools = wire.response_grammar(body), wire.tools(body)
    stream, with_usage = wire.flag(body, "stream"), wire.include_usage(body)
    manager = request.app[MANAGER]
    loaded = await manager.get(name)
    comp = loaded.composite
    text = comp.chat_prompt(chat, tools=tools, num_predict=max(int(options.get("num_predict", 0)), 0))
    req = make_request(comp.recipe, text, options, grammar=grammar)
    cid, created = wire.new_id("chatcmpl")
    if not stream:
        chunks = [c async for c in manager.generate(loaded, req)]
        return web.json_response(wire.chat_completion(cid, created, name, chunks))

    async def items() -> AsyncIterator[dict[str, Any]]:
        first = True
        async for chunk in manager.generate(loaded, req):
            for item in wire.chat_chunks(cid, created, name, chunk, first=first, with_usage=with_usage):
                yield item
            first = False

    return await _sse(request, items())


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    manager = request.app[MANAGER]
    if not body.get("model") and manager.default_name():  # Kobold clients may name no model
        body = {**body, "model": manager.default_name()}
    name = wire.model_field(body)
    prompt = wire.prompt(body)
    options = {**wire.options(body), **kobold_options(body)}
    grammar = wire.response_grammar(body) or options.pop("grammar", None)
    stream, with_usage = wire.flag(body, "stream"), wire.include_usage(body)
    loaded = await manager.get(name)
    comp = loaded.composite
    ids = comp.tokenize(prompt)
    if "max_length" in body or "max_context_length" in body:  # a Kobold client (SillyTavern's KoboldCpp type)
        ids = kobold_routes.fit_context(ids, options, max_context(body, comp.n_ctx))
    req = make_request(
        comp.recipe,
        ids,
        options,
        grammar=grammar,
        ignore_eos=bool(body.get("ban_eos_token")),
        trim_stop=body.get("trim_stop", True) is not False,
    )
    cid, created = wire.new_id("cmpl")
    _, chunks = kobold_routes.start(
        request, loaded, req, body.get("genkey")
    )  # so /api/extra/abort reaches it
    if not stream:
        return web.json_response(wire.completion(cid, created, name, [c async for c in chunks]))

    async def items() -> AsyncIterator[dict[str, Any]]:
        async for chunk in chunks:
            for item in wire.completion_chunks(cid, created, name, chunk, with_usage=with_usage):
                yield item

    return await _sse(request, items())


async def _sse(request: web.Request, items: AsyncIterator[Any]) -> web.StreamResponse:
    return await stream_response(
        request,
        items,
        content_type="text/event-stream",
        encode=sse,
        trailer=b"data: [DONE]\n\n",
        on_error=lambda msg: sse(wire.error_body(500, msg)),
        headers={"X-Accel-Buffering": "no"},
    )


def _model_object(name: str, recipe: Any, created: float) -> dict[str, Any]:
    described = describe(recipe)
    return wire.model_object(name, created, composite_object(described["alpha"], described["members"]))


async def models(request: web.Request) -> web.Response:
    def listing() -> list[dict[str, Any]]:  # store and GGUF header reads: off the event loop
        return [_model_object(n, r, m) for n, r, m in request.app[MANAGER].catalog.entries()]

    return web.json_response({"object": "list", "data": await asyncio.to_thread(listing)})


async def model(request: web.Request) -> web.Response:
    key, recipe = await asyncio.to_thread(request.app[MANAGER].catalog.lookup, request.match_info["model"])
    return web.json_response(_model_object(key, recipe, time.time()))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model)
