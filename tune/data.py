"""Training data: JSONL in five common shapes, normalised to chat conversations.

A file's format is detected from the keys of its first record (TRL and Unsloth
detect the same way) or forced with `--format`; every later record must match.
Records become `Example`s: a conversation whose assistant turns are learned
(unless a message says `weight: 0`), or raw text learned whole. Bad records are
collected with their line numbers so one run reports them all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanocommander.tune.errors import DataError

FORMATS = ("messages", "sharegpt", "alpaca", "completion", "text")
FORMAT_NAMES = {
    "messages": "OpenAI chat",
    "sharegpt": "ShareGPT",
    "alpaca": "Alpaca",
    "completion": "prompt/completion",
    "text": "raw text",
}
ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
}
MAX_REPORTED = 20


@dataclass(frozen=True)
class Example:
    """One training record: `messages` (role, content, weight) or raw `text`, and its line."""

    line: int
    messages: tuple[dict[str, Any], ...] = ()
    text: str | None = None


@dataclass
class Dataset:
    format: str
    examples: list[Example]
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, problem) for skipped records


class _Bad(Exception):
    """A record's problem; becomes 'line N: message'."""


def detect(record: dict[str, Any]) -> str:
    """The format a record's keys imply, or raise _Bad naming the keys that were found."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "completion"
    if "text" in record:
        return "text"
    keys = ", ".join(sorted(record)) or "none"
    raise _Bad(
        f"cannot tell the format from keys ({keys}); expected messages, conversations, "
        "instruction+output, prompt+completion or text"
    )


def load(path: str | Path, *, fmt: str | None = None, skip_bad: bool = False) -> Dataset:
    """Read and normalise a JSONL file; raise DataError listing bad lines unless `skip_bad`."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    examples, bad = [], []
    for number, line in _numbered(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise _Bad(f"expected a JSON object, got {type(record).__name__}")
            kind = detect(record)
            if fmt is None:
                fmt = kind
            elif kind != fmt and not _compatible(record, fmt):
                raise _Bad(f"looks like {FORMAT_NAMES[kind]} but the file is {FORMAT_NAMES[fmt]}")
            examples.append(normalise(record, fmt, number))
        except json.JSONDecodeError as exc:
            bad.append((number, f"invalid JSON: {exc.msg} (column {exc.colno})"))
        except _Bad as exc:
            bad.append((number, str(exc)))
    if bad and not skip_bad:
        shown = "\n".join(f"  {path}:{n}: {msg}" for n, msg in bad[:MAX_REPORTED])
        more = f"\n  ... and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
        raise DataError(f"{len(bad)} bad record(s) in {path} (pass --skip-bad to drop them):\n{shown}{more}")
    if not examples:
        raise DataError(f"no usable records in {path}")
    return Dataset(format=fmt or "text", examples=examples, bad=bad)


def _numbered(lines: Iterable[str]) -> Iterable[tuple[int, str]]:
    for i, line in enumerate(lines, start=1):
        if line.strip():
            yield i, line


def _compatible(record: dict[str, Any], fmt: str) -> bool:
    """A forced format accepts records that carry its keys even if detection would prefer another."""
    needed = {
        "messages": ("messages",),
        "sharegpt": ("conversations",),
        "alpaca": ("instruction", "output"),
        "completion": ("prompt", "completion"),
        "text": ("text",),
    }[fmt]
    return all(k in record for k in needed)


def normalise(record: dict[str, Any], fmt: str, line: int) -> Example:
    if fmt == "text":
        text = record.get("text")
        if not isinstance(text, str) or not text:
            raise _Bad("'text' must be a non-empty string")
        return Example(line=line, text=text)
    if fmt == "messages":
        messages = _messages(record.get("messages"), "messages", "role", "content")
    elif fmt == "sharegpt":
        messages = _messages(record.get("conversations"), "conversations", "from", "value")
    elif fmt == "alpaca":
        messages = _alpaca(record)
    else:
        messages = _completion(record)
    if not any(m["role"] == "assistant" and m["weight"] for m in messages):
        raise _Bad("no assistant message to learn from")
    return Example(line=line, messages=tuple(messages))


def _messages(value: Any, key: str, role_key: str, content_key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _Bad(f"'{key}' must be a non-empty list")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise _Bad(f"{where}: expected an object with '{role_key}' and '{content_key}'")
        # ShareGPT files sometimes use role/content inside `conversations`, and vice versa.
        raw_role = item.get(role_key, item.get("role", item.get("from")))
        if not isinstance(raw_role, str):
            raise _Bad(f"{where}: missing '{role_key}'")
        role = ROLE_ALIASES.get(raw_role.strip().lower())
        if role is None:
            raise _Bad(f"{where}: unknown role '{raw_role}'; use one of {', '.join(sorted(ROLE_ALIASES))}")
        content = _content(item.get(content_key, item.get("content", item.get("value"))), where)
        weight = item.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise _Bad(f"{where}: 'weight' must be 0 or 1")
        out.append({"role": role, "content": content, "weight": int(weight) if role == "assistant" else 0})
    return out


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: keep the text ones
        texts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) == len(value) and all(isinstance(t, str) for t in texts):
            return "".join(texts)  # type: ignore[arg-type]
        raise _Bad(f"{where}: only text content parts can be trained on")
    raise _Bad(f"{where}: 'content' must be a string")


def _alpaca(record: dict[str, Any]) -> list[dict[str, Any]]:
    fields = {}
    for key in ("instruction", "input", "output", "system"):
        value = record.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise _Bad(f"'{key}' must be a string")
        fields[key] = value
    if not fields["instruction"].strip():
        raise _Bad("'instruction' is empty")
    prompt = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"].strip() else "")
    out = [{"role": "system", "content": fields["system"], "weight": 0}] if fields["system"] else []
    return out + [
        {"role": "user", "content": prompt, "weight": 0},
        {"role": "assistant", "content": fields["output"], "weight": 1},
    ]


def _completion(record: dict[str, Any]) -> list[dict[str, Any]]:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return [
            {"role": "user", "content": prompt, "weight": 0},
            {"role": "assistant", "content": completion, "weight": 1},
        ]
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational prompt/completion
        head = [dict(m, weight=0) for m in _messages(prompt, "prompt", "role", "content")]
        return head + _messages(completion, "completion", "role", "content")
    raise _Bad("'prompt' and 'completion' must both be strings or both be message lists")
