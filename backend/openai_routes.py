"""OpenAI-compatible endpoints (/v1/*): chat completions, completions, models.

`/v1/completions` also honours KoboldCpp's native sampler fields, because
SillyTavern's "KoboldCpp" text-completion type sends them there.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from nanocommander.backend import kobold_routes
from nanocommander.backend.kobold_fields import kobold_options
from nanocommander.backend.server import MANAGER, read_json
from nanocommander.backend.streaming import sse, stream_response
from nanocommander.backend.translate import describe, grammar_for_format, make_request

from nanocommander.errors import InvalidRequest


def openai_options(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI field names -> engine options; temperature and top_p default to 1.0 as OpenAI's do."""
    opts: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repeat_penalty": 1.0}
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
        ("max_tokens", "num_predict"),
        ("max_completion_tokens", "num_predict"),
        ("stop", "stop"),
        ("alpha", "alpha"),
        ("member", "member"),
        ("top_k", "top_k"),
        ("min_p", "min_p"),
        ("repeat_penalty", "repeat_penalty"),
    ):
        if body.get(src) is not None:
            opts[dst] = body[src]
    if isinstance(body.get("logit_bias"), dict):
        opts["logit_bias"] = body["logit_bias"]
    return opts


def response_grammar(body: dict[str, Any]) -> str | None:
    fmt = body.get("response_format")
    if not fmt:
        return None
    if not isinstance(fmt, dict):
        raise InvalidRequest("response_format must be an object")
    if fmt.get("type") == "json_object":
        return grammar_for_format("json")
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return grammar_for_format(schema or "json")
    return None


def _usage(stats) -> dict[str, int]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.eval_count,
        "total_tokens": stats.prompt_tokens + stats.eval_count,
    }


def _finish(chunk) -> str:
    return "stop" if chunk.done_reason and chunk.done_reason.value == "stop" else "length"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    manager = request.app[MANAGER]
    name = body.get("model")
    messages = body.get("messages")
    if not isinstance(name, str) or not name:
        raise InvalidRequest('"model" is required')
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest('"messages" must be a non-empty list')
    loaded = await manager.get(name)
    comp = loaded.composite
    chat = []
    for m in messages:
        if not isinstance(m, dict):
            raise InvalidRequest("each message must be an object")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        chat.append({"role": m.get("role"), "content": content or ""})
    options = openai_options(body)
    prompt = comp.chat_prompt(
        chat, tools=body.get("tools") or None, num_predict=int(options.get("num_predict", 0))
    )
    req = make_request(comp.recipe, prompt, options, grammar=response_grammar(body))
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    base = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": name,
        "system_fingerprint": "nanocommander",
    }

    if not body.get("stream"):
        chunks = [c async for c in manager.generate(loaded, req)]
        last = chunks[-1]
        return web.json_response(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(c.text for c in chunks)},
                        "finish_reason": _finish(last),
                        "logprobs": None,
                    }
                ],
                "usage": _usage(last.stats),
                "system_fingerprint": "nanocommander",
            }
        )

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    async def items() -> AsyncIterator[dict[str, Any]]:
        yield {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
        async for chunk in manager.generate(loaded, req):
            if chunk.text:
                yield {
                    **base,
                    "choices": [{"index": 0, "delta": {"content": chunk.text}, "finish_reason": None}],
                }
            if chunk.done:
                yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(chunk)}]}
                if include_usage:
                    yield {**base, "choices": [], "usage": _usage(chunk.stats)}

    return await _sse(request, items())


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    manager = request.app[MANAGER]
    name = body.get("model") or manager.default_name()
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest('"prompt" must be a string')
    if not name:
        raise InvalidRequest('"model" is required')
    loaded = await manager.get(str(name))
    comp = loaded.composite
    options = {**openai_options(body), **kobold_options(body)}
    grammar = response_grammar(body) or options.pop("grammar", None)
    ids = comp.tokenize(prompt)
    if "max_length" in body or "max_context_length" in body:  # a Kobold client (SillyTavern's KoboldCpp type)
        max_ctx = min(int(body.get("max_context_length") or comp.n_ctx), comp.n_ctx)
        ids = kobold_routes.fit_context(ids, options, max_ctx)
    req = make_request(
        comp.recipe,
        ids,
        options,
        grammar=grammar,
        ignore_eos=bool(body.get("ban_eos_token")),
        trim_stop=body.get("trim_stop", True) is not False,
    )
    cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    base = {"id": cid, "object": "text_completion", "created": created, "model": name}
    _, stream = kobold_routes.start(
        request, loaded, req, body.get("genkey")
    )  # so /api/extra/abort reaches it
    if not body.get("stream"):
        chunks = [c async for c in stream]
        return web.json_response(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "text": "".join(c.text for c in chunks),
                        "finish_reason": _finish(chunks[-1]),
                        "logprobs": None,
                    }
                ],
                "usage": _usage(chunks[-1].stats),
            }
        )

    async def items() -> AsyncIterator[dict[str, Any]]:
        async for chunk in stream:
            if chunk.text or chunk.done:
                yield {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "text": chunk.text,
                            "logprobs": None,
                            "finish_reason": _finish(chunk) if chunk.done else None,
                        }
                    ],
                }

    return await _sse(request, items())


async def _sse(request: web.Request, items: AsyncIterator[Any]) -> web.StreamResponse:
    return await stream_response(
        request,
        items,
        content_type="text/event-stream",
        encode=sse,
        trailer=b"data: [DONE]\n\n",
        on_error=lambda msg: sse({"error": {"message": msg, "type": "server_error"}}),
        headers={"X-Accel-Buffering": "no"},
    )


def model_object(name: str, recipe, created: float) -> dict[str, Any]:
    info = describe(recipe)
    return {
        "id": name,
        "object": "model",
        "created": int(created),
        "owned_by": "nanocommander",
        "composite": {"alpha": info["alpha"], "members": info["members"]},
    }


async def models(request: web.Request) -> web.Response:
    entries = request.app[MANAGER].catalog.entries()
    return web.json_response({"object": "list", "data": [model_object(n, r, m) for n, r, m in entries]})


async def model(request: web.Request) -> web.Response:
    key, recipe = request.app[MANAGER].catalog.lookup(request.match_info["model"])
    return web.json_response(model_object(key, recipe, time.time()))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model)
