"""OpenAI-compatible endpoints (/v1/*): thin handlers over openai_api's pure translators.

`/v1/completions` also honours KoboldCpp's native sampler fields, because
SillyTavern's "KoboldCpp" text-completion type sends them there (and registers
the generation by genkey so /api/extra/abort reaches it).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from nanocommander.backend import embed_api, tools
from nanocommander.backend.app import MANAGER, read_json
from nanocommander.backend.generations import GENERATIONS
from nanocommander.backend.kobold import api as kobold_fields
from nanocommander.backend.ollama.api import composite_object
from nanocommander.backend.openai import api as wire
from nanocommander.backend.prepare import Chat, prepare
from nanocommander.backend.streaming import merged, sse, stream_response
from nanocommander.backend.translate import describe
from nanocommander.engine.llama.embed import finish
from nanocommander.engine.request.types import Chunk, GenerateRequest
from nanocommander.errors import InvalidRequest


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    name = wire.model_field(body)
    chat = wire.messages(body.get("messages"))
    options = wire.options(body)
    grammar, offered = wire.response_grammar(body), wire.tools(body)
    stream, with_usage = wire.flag(body, "stream"), wire.include_usage(body)
    manager = request.app[MANAGER]
    loaded = await manager.get(name)
    comp = loaded.composite
    plan = tools.plan(
        comp.template.source,
        comp.recipe.tool_parser,
        offered,
        body.get("tool_choice"),
        parallel=body.get("parallel_tool_calls") is not False,
    )
    req = await prepare(comp, Chat(chat, tools=offered), options, grammar=grammar)
    req = tools.logprobs_request(
        req, body.get("logprobs"), body.get("top_logprobs"), body.get("logprobs_member")
    )
    reqs = tools.samples(plan.apply(req), body.get("n"))
    cid, created = wire.new_id("chatcmpl")
    # n samples run together, so the scheduler batches them (streaming.merged)
    samples = [tools.split(manager.generate(loaded, r), plan) for r in reqs]
    if not stream:
        pairs: list[list[tuple[Chunk, list]]] = [[] for _ in reqs]
        async for index, pair in merged(samples):
            pairs[index].append(pair)
        choices = [([c for c, _ in ps], [call for _, cs in ps for call in cs]) for ps in pairs]
        (chunks, calls), *more = choices
        return web.json_response(wire.chat_completion(cid, created, name, chunks, calls, more=more))

    async def items() -> AsyncIterator[dict[str, Any]]:
        finals = []
        first, n_calls = [True] * len(reqs), [0] * len(reqs)
        async for index, (chunk, calls) in merged(samples):
            for item in wire.chat_chunks(
                cid,
                created,
                name,
                chunk,
                first=first[index],
                with_usage=False,
                index=index,
                calls=calls,
                first_call=n_calls[index],
                had_calls=n_calls[index] > 0,
            ):
                yield item
            first[index], n_calls[index] = False, n_calls[index] + len(calls)
            if chunk.done:
                finals.append(chunk.stats)
        if with_usage:
            yield wire.usage_chunk(cid, created, name, finals)

    return await _sse(request, items())


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    manager = request.app[MANAGER]
    if not body.get("model") and manager.default_name():  # Kobold clients may name no model
        body = {**body, "model": manager.default_name()}
    kobold = kobold_fields.is_kobold(body)  # SillyTavern's KoboldCpp/Ooba types, KoboldCpp's own clients
    if kobold:
        body = kobold_fields.lenient(body)
    name = wire.model_field(body)
    prompt = wire.prompt(body)
    options = {**wire.options(body), **kobold_fields.kobold_options(body)}
    grammar = wire.response_grammar(body) or options.pop("grammar", None)
    stream, with_usage = wire.flag(body, "stream"), wire.include_usage(body)
    loaded = await manager.get(name)
    comp = loaded.composite
    fit = None
    if kobold:  # KoboldCpp cuts the oldest text rather than refusing a long prompt
        limit = kobold_fields.context_limit(body, comp.n_ctx)
        fit = functools.partial(kobold_fields.fit_context, max_ctx=limit)
    req = await prepare(
        comp,
        prompt,
        options,
        grammar=grammar,
        fit=fit,
        ignore_eos=bool(body.get("ban_eos_token")),
        trim_stop=body.get("trim_stop", True) is not False,
    )
    want = body.get("logprobs")  # completions: an integer count of alternatives (0-20)
    if want is not None and (isinstance(want, bool) or not isinstance(want, int)):
        raise InvalidRequest('"logprobs" must be an integer between 0 and 20 on /v1/completions')
    req = tools.logprobs_request(req, want, None, body.get("logprobs_member"), top_key="logprobs")
    reqs = tools.samples(req, body.get("n"))
    cid, created = wire.new_id("cmpl")

    def run(r: GenerateRequest) -> AsyncIterator[Chunk]:
        # registered by genkey, so /api/extra/abort reaches it
        return request.app[GENERATIONS].start(manager, loaded, r, body.get("genkey"))[1]

    samples = [run(r) for r in reqs]  # together, so the scheduler batches them (streaming.merged)
    if not stream:
        chunks: list[list[Chunk]] = [[] for _ in reqs]
        async for index, chunk in merged(samples):
            chunks[index].append(chunk)
        first, *more = chunks
        return web.json_response(wire.completion(cid, created, name, first, more=more))

    async def items() -> AsyncIterator[dict[str, Any]]:
        offsets, finals = [0] * len(reqs), []
        async for index, chunk in merged(samples):
            for item in wire.completion_chunks(
                cid, created, name, chunk, with_usage=False, index=index, offset=offsets[index]
            ):
                yield item
            offsets[index] += len(chunk.text)
            if chunk.done:
                finals.append(chunk.stats)
        if with_usage:  # once, after the last sample, counting every sample's completion tokens
            base = {"id": cid, "object": "text_completion", "created": created, "model": name}
            yield {**base, "choices": [], "usage": wire.usage(*(finals or [None]))}

    return await _sse(request, items())


async def embeddings(request: web.Request) -> web.Response:
    """/v1/embeddings: unit vectors from the large member (or the recipe's `embedding` GGUF)."""

    body = await read_json(request)
    name = wire.model_field(body)
    inputs, dims, fmt = embed_api.openai_inputs(body)
    manager = request.app[MANAGER]
    loaded = await manager.get(name)
    embedder = await manager.embedder(loaded)
    vectors, n_tokens = await asyncio.to_thread(embedder.embed, inputs)
    vectors = finish(vectors, dimensions=dims)
    return web.json_response(embed_api.openai_response(name, vectors, n_tokens, fmt))


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
    out = wire.model_object(name, created, composite_object(described["alpha"], described["members"]))
    if "error" in described:  # an unreadable member: listed and flagged, as /api/tags does
        out["error"] = described["error"]
    return out


async def models(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    first = manager.default_name() if manager.settings.default_model else None

    def listing() -> list[dict[str, Any]]:  # store and GGUF header reads: off the event loop
        entries = sorted(manager.catalog.entries(), key=lambda e: e[0] != first)  # stable: default first
        return [_model_object(n, r, m) for n, r, m in entries]

    return web.json_response({"object": "list", "data": await asyncio.to_thread(listing)})


async def model(request: web.Request) -> web.Response:
    key, recipe = await asyncio.to_thread(request.app[MANAGER].catalog.lookup, request.match_info["model"])
    return web.json_response(_model_object(key, recipe, time.time()))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model)
