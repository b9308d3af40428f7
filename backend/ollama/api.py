"""Ollama's native wire format <-> the engine's types: pure functions, no aiohttp, no models.

Bodies are parsed once into frozen calls (GenerateCall, ChatCall) whose fields are
already type-checked, so handlers never touch raw JSON; chunks become wire objects
through generate_item / chat_item. Every type error is an InvalidRequest (a 400).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from nanocommander import units
from nanocommander.backend import provenance
from nanocommander.backend.config import parse_duration
from nanocommander.backend.prepare import grammar_for_format
from nanocommander.engine.decode.logprobs import token_text
from nanocommander.engine.request.options import clean_options
from nanocommander.engine.request.types import Chunk, DoneReason, TokenLogprob
from nanocommander.engine.text.toolcalls import ToolCall
from nanocommander.errors import InvalidRequest

ROLES = ("system", "user", "assistant", "tool")
FOREVER_S = 10 * 365 * 86400  # how far ahead /api/ps puts expires_at for keep_alive < 0


@dataclass(frozen=True)
class GenerateCall:
    """A parsed /api/generate body."""

    model: str
    prompt: str = ""
    system: str | None = None
    template: str | None = None
    raw: bool = False
    context: tuple[int, ...] = ()
    grammar: str | None = None
    keep_alive: float | None = None  # None: the server default
    options: Mapping[str, Any] = field(default_factory=dict)  # validated (clean_options)
    stream: bool = True
    logprobs: Any = None  # the raw `logprobs`, `top_logprobs` and `logprobs_member` (tools.logprobs_request)
    top_logprobs: Any = None
    logprobs_member: Any = None

    @property
    def lifecycle(self) -> bool:
        """An empty prompt only loads (or, with keep_alive 0, unloads) the model."""
        return not self.prompt and not self.context


@dataclass(frozen=True)
class ChatCall:
    """A parsed /api/chat body."""

    model: str
    messages: tuple[dict[str, Any], ...] = ()
    tools: tuple[dict[str, Any], ...] | None = None
    grammar: str | None = None
    keep_alive: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = True
    tool_choice: Any = None  # NanoCommander's extension: OpenAI's tool_choice ("required" or a function)
    logprobs: Any = None
    top_logprobs: Any = None
    logprobs_member: Any = None


def _typed(body: Mapping[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, types):
        raise InvalidRequest(f'"{key}" must be {what}')
    return value


def model_name(body: Mapping[str, Any]) -> str:
    """`model`, or the deprecated alias `name`; Ollama answers "model is required" without one."""
    name = _typed(body, "model", str, "a string") or _typed(body, "name", str, "a string")
    if not name:
        raise InvalidRequest("model is required")
    return name


def keep_alive(body: Mapping[str, Any]) -> float | None:
    """Seconds; a number or a duration string ("5m", "1h30m"); negative is forever, 0 unloads."""
    value = body.get("keep_alive")
    if value is None:
        return None
    try:
        return parse_duration(value, 0.0)
    except ValueError as exc:
        raise InvalidRequest(f"keep_alive: {exc}") from None


def options(body: Mapping[str, Any]) -> dict[str, Any]:
    return clean_options(_typed(body, "options", dict, "an object"))


def stream_flag(body: Mapping[str, Any]) -> bool:
    value = _typed(body, "stream", bool, "a boolean")
    return True if value is None else value


def parse_generate(body: Mapping[str, Any]) -> GenerateCall:
    context = _typed(body, "context", list, "a list of token ids") or []
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in context):
        raise InvalidRequest('"context" must be a list of token ids')
    call = GenerateCall(
        model=model_name(body),
        prompt=_typed(body, "prompt", str, "a string") or "",
        system=_typed(body, "system", str, "a string") or None,
        template=_typed(body, "template", str, "a string") or None,
        raw=bool(_typed(body, "raw", bool, "a boolean")),
        context=tuple(context),
        grammar=grammar_for_format(body.get("format")),
        keep_alive=keep_alive(body),
        options=options(body),
        stream=stream_flag(body),
        **_logprob_fields(body),
    )
    if call.raw and (call.system or call.template or call.context):
        raise InvalidRequest("raw mode does not support template, system, or context")
    return call


def chat_message(m: Any) -> dict[str, Any]:
    """One chat message as the chat template gets it (images are dropped: no vision members)."""
    if not isinstance(m, dict):
        raise InvalidRequest("each message must be an object")
    role = m.get("role")
    if not isinstance(role, str) or role.lower() not in ROLES:
        raise InvalidRequest(f"message role must be one of {', '.join(ROLES)}")
    content = m.get("content")
    if content is not None and not isinstance(content, str):
        raise InvalidRequest("message content must be a string")
    out: dict[str, Any] = {"role": role.lower(), "content": content or ""}
    calls = m.get("tool_calls")
    if calls:
        if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
            raise InvalidRequest("message tool_calls must be a list of objects")
        out["tool_calls"] = calls
    for key in ("tool_name", "tool_call_id", "name", "thinking"):
        if isinstance(m.get(key), str):
            out[key] = m[key]
    return out


def parse_chat(body: Mapping[str, Any]) -> ChatCall:
    messages = _typed(body, "messages", list, "a list of messages") or []
    tools = _typed(body, "tools", list, "a list of tools")
    if tools and not all(isinstance(t, dict) for t in tools):
        raise InvalidRequest('"tools" must be a list of objects')
    return ChatCall(
        model=model_name(body),
        messages=tuple(chat_message(m) for m in messages),
        tools=tuple(tools) if tools else None,
        grammar=grammar_for_format(body.get("format")),
        keep_alive=keep_alive(body),
        options=options(body),
        stream=stream_flag(body),
        tool_choice=body.get("tool_choice"),
        **_logprob_fields(body),
    )


def _logprob_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: body.get(k) for k in ("logprobs", "top_logprobs", "logprobs_member")}


# -- chunks -> wire ---------------------------------------------------------------------------


def now_iso(ts: float | None = None) -> str:
    """RFC 3339 with the local offset, as Ollama writes created_at (clients parse it with fromisoformat)."""
    return datetime.fromtimestamp(time.time() if ts is None else ts, tz=timezone.utc).astimezone().isoformat()


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def done_reason(chunk: Chunk) -> str:
    return "length" if chunk.done_reason == DoneReason.LENGTH else "stop"


def final_fields(chunk: Chunk) -> dict[str, Any]:
    """done_reason and the durations (nanoseconds) of the final chunk."""
    s = chunk.stats
    out: dict[str, Any] = {"done_reason": done_reason(chunk)}
    if s is not None:
        out.update(
            total_duration=ns(s.total_s + s.load_s),
            load_duration=ns(s.load_s),
            prompt_eval_count=s.prompt_tokens,
            prompt_eval_duration=ns(s.prompt_eval_s),
            eval_count=s.eval_count,
            eval_duration=ns(s.eval_s),
        )
        # NanoCommander's extras (clients ignore unknown keys): speculative drafts and steering.
        if s.speculative:
            out.update(draft_source=s.speculative, draft_count=s.drafted, draft_accepted=s.accepted)
        if s.steer_mode:
            out.update(steer_mode=s.steer_mode, steered_count=s.steered)
    return out


def logprob_items(entries: Sequence[TokenLogprob] | None) -> list[dict[str, Any]] | None:
    """Ollama's `logprobs`: token, logprob, bytes and top_logprobs per generated token."""
    if entries is None:
        return None

    def one(e: TokenLogprob) -> dict[str, Any]:
        return {
            "token": token_text(e.piece),
            "logprob": e.logprob,
            "bytes": list(e.piece),
        }

    return [{**one(e), "top_logprobs": [one(t) for t in e.top]} for e in entries]


def tool_call_items(calls: Sequence[ToolCall], start: int = 0) -> list[dict[str, Any]]:
    """Ollama's `message.tool_calls`: arguments as an object, as the template wrote them."""
    return [
        {"id": c.id, "function": {"index": start + i, "name": c.name, "arguments": c.arguments}}
        for i, c in enumerate(calls)
    ]


def generate_item(model: str, chunk: Chunk, context: Sequence[int] | None = None) -> dict[str, Any]:
    """One /api/generate line; the final one carries `context` unless in raw mode (context=None)."""
    item: dict[str, Any] = {
        "model": model,
        "created_at": now_iso(),
        "response": chunk.text,
        "done": chunk.done,
    }
    if chunk.logprobs is not None:
        item["logprobs"] = logprob_items(chunk.logprobs)
    provenance.place(item, [chunk])
    if chunk.done:
        item.update(final_fields(chunk))
        if context is not None:
            item["context"] = list(context)
    return item


def chat_item(
    model: str, chunk: Chunk, calls: Sequence[ToolCall] = (), *, first_call: int = 0
) -> dict[str, Any]:
    """One /api/chat line: message.role and message.content on every line, the final one too;
    tool calls ride on the line that completed them."""
    message: dict[str, Any] = {"role": "assistant", "content": chunk.text}
    if calls:
        message["tool_calls"] = tool_call_items(calls, first_call)
    item: dict[str, Any] = {"model": model, "created_at": now_iso(), "message": message, "done": chunk.done}
    if chunk.logprobs is not None:
        item["logprobs"] = logprob_items(chunk.logprobs)
    provenance.place(item, [chunk])
    if chunk.done:
        item.update(final_fields(chunk))
    return item


def _fold_logprobs(out: dict[str, Any], items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if any("logprobs" in i for i in items):
        out["logprobs"] = [e for i in items for e in i.get("logprobs") or ()]
    return provenance.fold(out, items)


def fold_generate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """stream:false is the stream folded: the last line with the whole response."""
    return _fold_logprobs({**items[-1], "response": "".join(i["response"] for i in items)}, items)


def fold_chat(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(i["message"]["content"] for i in items),
    }
    calls = [c for i in items for c in i["message"].get("tool_calls") or ()]
    if calls:
        message["tool_calls"] = calls
    return _fold_logprobs({**items[-1], "message": message}, items)


def lifecycle_item(model: str, reason: str, *, chat: bool) -> dict[str, Any]:
    """The answer to an empty prompt / empty messages: done_reason "load" or "unload"."""
    item: dict[str, Any] = {"model": model, "created_at": now_iso()}
    item.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
    return {**item, "done": True, "done_reason": reason}


# -- model descriptions -----------------------------------------------------------------------


def details(members: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama's `details`, from the large member (what the composite mostly is)."""
    large = members.get("large", {})
    arch = large.get("architecture") or "unknown"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": sorted({m.get("architecture") or arch for m in members.values()}),
        "parameter_size": units.count(int(large.get("parameter_count") or 0)),
        "quantization_level": large.get("quantization") or "unknown",
    }


def capabilities(template: str | None) -> list[str]:
    """`tools` when the chat template mentions tools (Ollama's and LiteLLM's test)."""
    return ["completion", "tools"] if template and "tools" in template.lower() else ["completion"]


def composite_object(alpha: float, members: Mapping[str, Any]) -> dict[str, Any]:
    """The `composite` object of /api/show, /api/tags and /v1/models (chat templates left out)."""
    slim = {role: {k: v for k, v in m.items() if k != "chat_template"} for role, m in members.items()}
    return {"alpha": alpha, "members": slim}


def tag_entry(name: str, described: Mapping[str, Any], modified: float) -> dict[str, Any]:
    """One /api/tags model; `described` is translate.describe(recipe)."""
    return {
        "name": name,
        "model": name,
        "modified_at": now_iso(modified),
        "size": described["size"],
        "digest": described["digest"],
        "details": details(described["members"]),
        "composite": composite_object(described["alpha"], described["members"]),
        **({"error": described["error"]} if "error" in described else {}),  # listed, flagged (unreadable)
    }


def parameters_text(parameters: Mapping[str, Any]) -> str:
    """`/api/show` parameters: one `%-30s %#v` line per value, a list one line per item."""
    lines = []
    for key, value in parameters.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            shown = f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v
            lines.append(f"{key:<30} {shown}")
    return "\n".join(lines)


def ps_entry(
    name: str,
    described: Mapping[str, Any],
    expires_at: float,
    n_ctx: int,
    family: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    if expires_at == float("inf"):
        expires_at = time.time() + FOREVER_S
    extra = {"family": dict(family)} if family is not None else {}
    return {
        **extra,
        "name": name,
        "model": name,
        "size": described["size"],
        "size_vram": 0,  # CPU inference
        "digest": described["digest"],
        "details": details(described["members"]),
        "expires_at": now_iso(expires_at),
        "context_length": n_ctx,
    }


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": message}
