"""OpenAI's wire format <-> the engine's types: pure functions, no aiohttp, no models.

Field names map onto the engine's (Ollama-style) option names; temperature and top_p
default to 1.0 as OpenAI's do (not the recipe's), and penalties and top_k are off unless
asked for. Errors use OpenAI's envelope {"error": {message, type, param, code}}.
"""

from __future__ import annotations

import codecs
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from nanocommander.backend import provenance
from nanocommander.backend.prepare import grammar_for_format
from nanocommander.engine.decode.logprobs import token_text
from nanocommander.engine.request.options import check_value
from nanocommander.engine.request.types import Chunk, DoneReason, Stats, TokenLogprob
from nanocommander.engine.text.toolcalls import ToolCall
from nanocommander.errors import InvalidRequest

# OpenAI field -> engine option; top-level alpha/member/steer/speculative are NanoCommander's knobs.
FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
    "stop": "stop",
    "alpha": "alpha",
    "member": "member",
    "steer": "steer",
    "speculative": "speculative",
    "provenance": "provenance",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
}
DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repeat_penalty": 1.0}
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def options(body: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI fields -> validated engine options; a wrong type names the OpenAI field."""
    opts: dict[str, Any] = dict(DEFAULTS)
    for src, dst in FIELDS.items():
        value = body.get(src)
        if value is None:
            continue
        try:
            opts[dst] = check_value(dst, value)
        except InvalidRequest as exc:
            raise InvalidRequest(str(exc).replace(f'option "{dst}"', f'"{src}"')) from None
    if isinstance(body.get("logit_bias"), dict) and body["logit_bias"]:
        opts["logit_bias"] = check_value("logit_bias", body["logit_bias"])
    return opts


def response_grammar(body: Mapping[str, Any]) -> str | None:
    """`response_format`: json_object is JSON mode, json_schema constrains to the schema, text is free."""
    fmt = body.get("response_format")
    if not fmt:
        return None
    if not isinstance(fmt, dict):
        raise InvalidRequest('"response_format" must be an object')
    kind = fmt.get("type")
    if kind == "json_object":
        return grammar_for_format("json")
    if kind == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return grammar_for_format(schema if isinstance(schema, dict) else "json")
    if kind in (None, "text"):
        return None
    raise InvalidRequest(f'"response_format.type" must be text, json_object or json_schema, not {kind!r}')


def _text(content: Any) -> str:
    """String content, or the text parts of a content-part list (images are dropped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise InvalidRequest("message content must be a string or a list of content parts")


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls carry arguments as a JSON string; chat templates expect an object."""
    if not isinstance(calls, list):
        raise InvalidRequest("message tool_calls must be a list")
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest("each tool call needs a function with a name")
        args = fn.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise InvalidRequest("tool call arguments must be a JSON object") from None
        out.append({**call, "function": {"name": fn["name"], "arguments": args}})
    return out


def messages(raw: Any) -> list[dict[str, Any]]:
    """Chat messages as the chat template gets them; `developer` is a system message."""
    if not isinstance(raw, list):
        raise InvalidRequest('"messages" must be a list')
    if not raw:
        raise InvalidRequest("[] is too short - 'messages'")
    out = []
    for m in raw:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise InvalidRequest(f"each message must be an object with a role in {', '.join(ROLES)}")
        role = {"developer": "system", "function": "tool"}.get(m["role"], m["role"])
        msg: dict[str, Any] = {"role": role, "content": _text(m.get("content"))}
        if m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(m["tool_calls"])
        for key in ("tool_call_id", "name"):
            if isinstance(m.get(key), str):
                msg[key] = m[key]
        out.append(msg)
    return out


def tools(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    value = body.get("tools")
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise InvalidRequest('"tools" must be a list of objects')
    return value


def model_field(body: Mapping[str, Any]) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest('"model" is required and must be a string')
    return name


def prompt(body: Mapping[str, Any]) -> str:
    """`/v1/completions` prompt: a string, or a list holding exactly one string."""
    value = body.get("prompt", "")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if not isinstance(value, str):
        raise InvalidRequest('"prompt" must be a string')
    return value


def flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f'"{key}" must be a boolean')
    return bool(value)


def include_usage(body: Mapping[str, Any]) -> bool:
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise InvalidRequest('"stream_options" must be an object')
    return bool((opts or {}).get("include_usage"))


# -- chunks -> wire ---------------------------------------------------------------------------


def new_id(prefix: str) -> tuple[str, int]:
    return f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time())


def finish_reason(chunk: Chunk, calls: bool = False) -> str:
    if chunk.done_reason == DoneReason.LENGTH:
        return "length"
    return "tool_calls" if calls else "stop"


def usage(stats: Stats | None, *more: Stats | None) -> dict[str, int]:
    """Token counts; with `n` samples the prompt counts once and the completions add up."""
    s = stats or Stats()
    completion = s.eval_count + sum(m.eval_count for m in more if m is not None)
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": s.prompt_tokens + completion,
    }


def tool_call_item(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """OpenAI's tool call: arguments as a JSON string; streamed deltas also carry their index."""
    item: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
    }
    return item if index is None else {"index": index, **item}


def _token(e: TokenLogprob) -> dict[str, Any]:
    return {"token": token_text(e.piece), "logprob": e.logprob, "bytes": list(e.piece)}


def chat_logprobs(entries: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    """`choices[].logprobs` of chat: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    if entries is None:
        return None
    content = [{**_token(e), "top_logprobs": [_token(t) for t in e.top]} for e in entries]
    return {"content": content, "refusal": None}


def _joined_logprobs(chunks: Sequence[Chunk]) -> list[TokenLogprob] | None:
    if all(c.logprobs is None for c in chunks):
        return None
    return [e for c in chunks for e in c.logprobs or ()]


def chat_choice(index: int, chunks: Sequence[Chunk], calls: Sequence[ToolCall] = ()) -> dict[str, Any]:
    content = "".join(c.text for c in chunks)
    message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    if calls:
        message["tool_calls"] = [tool_call_item(c) for c in calls]
    return {
        "index": index,
        "message": message,
        "finish_reason": finish_reason(chunks[-1], bool(calls)),
        "logprobs": chat_logprobs(_joined_logprobs(chunks)),
        **provenance.place({}, chunks),
    }


def chat_completion(
    cid: str,
    created: int,
    model: str,
    chunks: Sequence[Chunk],
    calls: Sequence[ToolCall] = (),
    *,
    more: Sequence[tuple[Sequence[Chunk], Sequence[ToolCall]]] = (),
) -> dict[str, Any]:
    """A non-streamed chat completion: the stream folded (`more`: the other `n` samples)."""
    choices = [(chunks, calls), *more]
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_nanocommander",
        "choices": [chat_choice(i, ch, cl) for i, (ch, cl) in enumerate(choices)],
        "usage": usage(*(ch[-1].stats for ch, _ in choices)),
    }


def _chunk_base(cid: str, created: int, model: str) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_nanocommander",
    }


def chat_chunks(
    cid: str,
    created: int,
    model: str,
    chunk: Chunk,
    *,
    first: bool,
    with_usage: bool,
    index: int = 0,
    calls: Sequence[ToolCall] = (),
    first_call: int = 0,
    had_calls: bool = False,
) -> list[dict]:
    """The SSE objects for one engine chunk: a role delta first, content deltas, tool-call
    deltas (each call whole), a finish chunk, then (stream_options.include_usage) a usage
    chunk with no choices. `had_calls`: this choice already streamed tool calls."""
    base = _chunk_base(cid, created, model)

    def choice(
        delta: dict[str, Any], finish: str | None = None, logprobs: Any = None, of=()
    ) -> dict[str, Any]:
        entry = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**base, "choices": [provenance.place(entry, of)]}

    out = [choice({"role": "assistant", "content": ""})] if first else []
    if chunk.text or chunk.logprobs or chunk.provenance:
        out.append(choice({"content": chunk.text}, logprobs=chat_logprobs(chunk.logprobs), of=[chunk]))
    if calls:
        items = [tool_call_item(c, first_call + i) for i, c in enumerate(calls)]
        out.append(choice({"tool_calls": items}))
    if chunk.done:
        out.append(choice({}, finish_reason(chunk, bool(calls) or had_calls)))
        if with_usage:
            out.append(usage_chunk(cid, created, model, [chunk.stats]))
    return out


def usage_chunk(cid: str, created: int, model: str, stats: Sequence[Stats | None]) -> dict[str, Any]:
    return {**_chunk_base(cid, created, model), "choices": [], "usage": usage(*stats)}


def completion_logprobs(entries: Sequence[TokenLogprob] | None, offset: int = 0) -> dict[str, Any] | None:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
    if entries is None:
        return None
    tokens = [token_text(e.piece) for e in entries]
    decoder, offsets = codecs.getincrementaldecoder("utf-8")(errors="replace"), []
    for e in entries:  # where each token's text starts in the completion (a split character counts once)
        offsets.append(offset)
        offset += len(decoder.decode(e.piece))
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{_token(t)["token"]: t.logprob for t in e.top} for e in entries],
        "text_offset": offsets,
    }


def completion(
    cid: str, created: int, model: str, chunks: Sequence[Chunk], *, more: Sequence[Sequence[Chunk]] = ()
) -> dict[str, Any]:
    choices = [chunks, *more]
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "text": "".join(c.text for c in ch),
                "finish_reason": finish_reason(ch[-1]),
                "logprobs": completion_logprobs(_joined_logprobs(ch)),
                **provenance.place({}, ch),
            }
            for i, ch in enumerate(choices)
        ],
        "usage": usage(*(ch[-1].stats for ch in choices)),
    }


def completion_chunks(
    cid: str, created: int, model: str, chunk: Chunk, *, with_usage: bool, index: int = 0, offset: int = 0
) -> list[dict]:
    """`offset`: characters of this choice streamed before the chunk (for text_offset)."""
    base = {"id": cid, "object": "text_completion", "created": created, "model": model}
    if not chunk.text and not chunk.done:
        return []
    finish = finish_reason(chunk) if chunk.done else None
    entry = {
        "index": index,
        "text": chunk.text,
        "logprobs": completion_logprobs(chunk.logprobs, offset),
        "finish_reason": finish,
    }
    out = [{**base, "choices": [provenance.place(entry, [chunk])]}]
    if chunk.done and with_usage:
        out.append({**base, "choices": [], "usage": usage(chunk.stats)})
    return out


def model_object(name: str, created: float, composite: Mapping[str, Any]) -> dict[str, Any]:
    """One /v1/models item; `composite` tells the members and alpha (clients ignore extra keys)."""
    owner = name.split("/")[0] if "/" in name else "library"
    return {"id": name, "object": "model", "created": int(created), "owned_by": owner, "composite": composite}


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    code = {401: "invalid_api_key", 404: "model_not_found", 503: "server_busy"}.get(status)
    etype = ERROR_TYPES.get(status, "api_error" if status != 503 else "server_error")
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}
