"""OpenAI's wire format <-> the engine's types: pure functions, no aiohttp, no models.

Field names map onto the engine's (Ollama-style) option names; temperature and top_p
default to 1.0 as OpenAI's do (not the recipe's), and penalties and top_k are off unless
asked for. Errors use OpenAI's envelope {"error": {message, type, param, code}}.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from nanocommander.backend.translate import grammar_for_format
from nanocommander.engine.options import check_value
from nanocommander.engine.types import Chunk, DoneReason, Stats

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


def finish_reason(chunk: Chunk) -> str:
    return "length" if chunk.done_reason == DoneReason.LENGTH else "stop"


def usage(stats: Stats | None) -> dict[str, int]:
    s = stats or Stats()
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.eval_count,
        "total_tokens": s.prompt_tokens + s.eval_count,
    }


def chat_completion(cid: str, created: int, model: str, chunks: Sequence[Chunk]) -> dict[str, Any]:
    """A non-streamed chat completion: the stream folded."""
    last = chunks[-1]
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_nanocommander",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(c.text for c in chunks)},
                "finish_reason": finish_reason(last),
                "logprobs": None,
            }
        ],
        "usage": usage(last.stats),
    }


def chat_chunks(
    cid: str, created: int, model: str, chunk: Chunk, *, first: bool, with_usage: bool
) -> list[dict]:
    """The SSE objects for one engine chunk: a role delta first, content deltas, a finish chunk,
    then (stream_options.include_usage) a usage chunk with no choices."""
    base = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_nanocommander",
    }

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    out = [choice({"role": "assistant", "content": ""})] if first else []
    if chunk.text:
        out.append(choice({"content": chunk.text}))
    if chunk.done:
        out.append(choice({}, finish_reason(chunk)))
        if with_usage:
            out.append({**base, "choices": [], "usage": usage(chunk.stats)})
    return out


def completion(cid: str, created: int, model: str, chunks: Sequence[Chunk]) -> dict[str, Any]:
    last = chunks[-1]
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": "".join(c.text for c in chunks),
                "finish_reason": finish_reason(last),
                "logprobs": None,
            }
        ],
        "usage": usage(last.stats),
    }


def completion_chunks(cid: str, created: int, model: str, chunk: Chunk, *, with_usage: bool) -> list[dict]:
    base = {"id": cid, "object": "text_completion", "created": created, "model": model}
    if not chunk.text and not chunk.done:
        return []
    finish = finish_reason(chunk) if chunk.done else None
    out = [{**base, "choices": [{"index": 0, "text": chunk.text, "logprobs": None, "finish_reason": finish}]}]
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
