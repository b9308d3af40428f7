"""Tool calls: which syntax a model writes them in, a grammar that forces one, and a parser.

Models trained for tools write calls in their chat template's own syntax:

* `hermes` (Qwen2.5, Hermes 2 Pro/3): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`,
  one block per call, possibly after some text;
* `llama3` (Llama 3.1-3.3): the reply is a JSON object `{"name": ..., "parameters": {...}}`
  (optionally after `<|python_tag|>`);
* `mistral`: `[TOOL_CALLS][{"name": ..., "arguments": {...}}]`, or in newer templates
  `[TOOL_CALLS]name[ARGS]{...}`; `[TOOL_CALLS]` is a control token, so the request asks the
  engine to render it as text (`special_text`).

Whatever the family, a reply that is nothing but JSON calls (`{"name": ..., "arguments": {...}}`,
a list of them, or one in a ```json fence), with no marker, is parsed as calls too (small models
drop the tags; Ollama falls back to the same), but only when every name is a tool that was
offered: ordinary JSON content stays content. With no family known, `BARE` parses only these.

The family is read from the text of the chat template that renders the chat (a recipe's
`tool_parser` names it when that fails). `ToolCallParser` splits streamed text into content
and calls without knowing any wire format; protocols turn `ToolCall`s into their shapes.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from nanocommander.errors import InvalidRequest

PARSERS = ("hermes", "llama3", "mistral")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""


def _new_id(family: str) -> str:
    if family == "mistral":  # Mistral's templates refuse ids that are not 9 alphanumerics
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return "call_" + secrets.token_hex(12)


def detect(template: str | None) -> str | None:
    """The tool-call family a chat template's model writes, from the template's text (None: unknown)."""
    if not template:
        return None
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template or "[AVAILABLE_TOOLS]" in template:
        return "mistral"
    if "<|start_header_id|>" in template and ('"parameters"' in template or "<|python_tag|>" in template):
        return "llama3"
    return None


# -- bodies: the text after the opening marker -> calls ------------------------------------------


def _object(raw: Any, args_keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ValueError("a tool call is an object with a string name")
    args = next((raw[k] for k in args_keys if k in raw), {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        args = json.loads(args) if args.strip() else {}
    if not isinstance(args, dict):
        raise ValueError("tool call arguments must be an object")
    return {
        "name": raw["name"],
        "arguments": args,
        "id": raw.get("id") if isinstance(raw.get("id"), str) else "",
    }


def _json_values(text: str) -> list[Any]:
    """One or more JSON values separated by whitespace, `;` or `,` (what models write between calls)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            return out
        value, i = decoder.raw_decode(text, i)
        out.append(value)


_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\r?\n")
_FENCE_OPENING = re.compile(r"```[A-Za-z]*[ \t]*\r?")
BARE_STARTS = ("{", "[", "```")  # how a reply that is only JSON calls can begin


def _bare_calls(text: str, names: frozenset[str] | None) -> list[dict[str, Any]]:
    """The calls a marker-less reply holds; ValueError unless it is only calls of offered tools."""
    body = text.strip()
    if fence := _FENCE.match(body):
        body = body[fence.end() :].rstrip().removesuffix("```")
    values = _json_values(body)
    flat = [item for v in values for item in (v if isinstance(v, list) else [v])]
    if not flat or not all(isinstance(v, dict) and ("arguments" in v or "parameters" in v) for v in flat):
        raise ValueError("not a tool call")
    calls = [_object(v, ("arguments", "parameters")) for v in flat]
    if names is not None and any(c["name"] not in names for c in calls):
        raise ValueError("not an offered tool")
    return calls


def _bare_verdict(text: str, names: frozenset[str] | None) -> bool | None:
    """Mid-stream: True while `text` reads as calls so far, False once it cannot be one, None: wait."""
    if text.startswith("`"):
        fence = _FENCE.match(text)
        if fence is None:
            return None if _FENCE_OPENING.fullmatch(text) or "```".startswith(text) else False
        text = text[fence.end() :].lstrip()
    if not text:
        return None
    if text[0] not in "{[":
        return False
    end = _first_value_end(text)
    if end < 0:
        return None
    try:
        _bare_calls(text[:end], names)
    except ValueError:
        return False
    return True


def _first_value_end(text: str) -> int:
    """Where the JSON object or array opening `text` closes (brackets outside strings); -1: not yet."""
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def _hermes_body(body: str) -> list[dict[str, Any]]:
    return [_object(v, ("arguments", "parameters")) for v in _json_values(body)]


def _llama3_body(body: str) -> list[dict[str, Any]]:
    body = body.removeprefix("<|python_tag|>")
    values = _json_values(body)
    if not values:
        raise ValueError("no tool call")
    return [_object(v, ("parameters", "arguments")) for v in values]


def _mistral_body(body: str) -> list[dict[str, Any]]:
    body = body.strip()
    if body.startswith("["):  # [{"name": ..., "arguments": ...}, ...]
        values = _json_values(body)
        if len(values) != 1 or not isinstance(values[0], list) or not values[0]:
            raise ValueError("expected a JSON array of tool calls")
        return [_object(v, ("arguments", "parameters")) for v in values[0]]
    calls = []  # name[ARGS]{...}[TOOL_CALLS]name[ARGS]{...} (the v11 template)
    for part in filter(None, (p.strip() for p in body.split("[TOOL_CALLS]"))):
        name, sep, args = part.partition("[ARGS]")
        if not sep or not name.strip():
            raise ValueError("expected name[ARGS]{...}")
        calls.append(_object({"name": name.strip(), "arguments": json.loads(args)}, ("arguments",)))
    return calls


@dataclass(frozen=True)
class Family:
    name: str
    starts: tuple[str, ...]  # markers that open calls anywhere in the reply
    end: str | None  # the marker closing one call; None: the calls run to the end of the reply
    body: Callable[[str], list[dict[str, Any]]]
    special_text: tuple[str, ...] = ()  # control tokens the engine must render for the parser to see them
    args_key: str = "arguments"  # how the forcing grammar names the arguments


FAMILIES = {
    "hermes": Family("hermes", ("<tool_call>",), "</tool_call>", _hermes_body),
    "llama3": Family("llama3", ("<|python_tag|>",), None, _llama3_body, ("<|python_tag|>",), "parameters"),
    "mistral": Family("mistral", ("[TOOL_CALLS]",), None, _mistral_body, ("[TOOL_CALLS]",)),
}
BARE = Family("json", (), None, _hermes_body)  # no syntax known: only marker-less JSON calls parse


def family(template: str | None, override: str | None = None) -> Family | None:
    """The family named by a recipe's `tool_parser`, else the one detected from the template."""
    name = override or detect(template)
    return FAMILIES.get(name) if name else None


# -- the incremental parser -------------------------------------------------------------------------


@dataclass
class ToolCallParser:
    """Feed streamed text; get back content safe to show now and the calls completed so far.

    Text that could still turn into a call (a partial marker, a reply that starts like a
    call) is held back; a body that does not parse is given back as content, unchanged.
    `names` are the offered tools: a marker-less reply is calls only when it names them
    (None: any name, for callers that check names themselves).
    """

    family: Family
    names: frozenset[str] | None = None
    calls: list[ToolCall] = field(default_factory=list)
    _pending: str = ""
    _marker: str | None = None  # inside a call body that this marker opened ("" for a bare start)
    _at_start: bool = True  # nothing but whitespace seen yet

    def push(self, text: str) -> tuple[str, list[ToolCall]]:
        self._pending += text
        return self._step(final=False)

    def finish(self) -> tuple[str, list[ToolCall]]:
        return self._step(final=True)

    def _step(self, final: bool) -> tuple[str, list[ToolCall]]:
        out: list[str] = []
        new: list[ToolCall] = []
        while True:
            if self._marker is None:
                if not self._scan_text(out, final):
                    break
            elif not self._scan_body(out, new, final):
                break
        self.calls += new
        return "".join(out), new

    def _scan_text(self, out: list[str], final: bool) -> bool:
        """Outside a call: emit text up to a marker; True when a body was entered."""
        fam, text = self.family, self._pending
        if self._at_start:
            stripped = text.lstrip()
            opening = (*fam.starts, *BARE_STARTS)
            if not final and (
                not stripped or any(len(stripped) < len(m) and m.startswith(stripped) for m in opening)
            ):
                return False  # could still become a marker or a bare start ("[" of "[TOOL_CALLS]")
            if stripped.startswith(BARE_STARTS) and not stripped.startswith(fam.starts):
                self._pending, self._marker, self._at_start = stripped, "", False
                return True
        hits = [(text.find(m), m) for m in fam.starts]
        hits = [(i, m) for i, m in hits if i >= 0]
        if hits:
            i, marker = min(hits)
            out.append(text[:i])
            self._pending, self._marker, self._at_start = text[i + len(marker) :], marker, False
            return True
        hold = 0 if final else _partial_suffix(text, fam.starts)
        emit = text[: len(text) - hold]
        if emit.strip():
            self._at_start = False
        out.append(emit)
        self._pending = text[len(text) - hold :]
        return False

    def _scan_body(self, out: list[str], new: list[ToolCall], final: bool) -> bool:
        """Inside a call: parse it once closed (or at the end); True to go on scanning."""
        fam, marker = self.family, self._marker or ""
        if not marker:
            return self._scan_bare(out, new, final)
        if fam.end is not None:
            i = self._pending.find(fam.end)
            if i < 0 and not final:
                return False
            body = self._pending if i < 0 else self._pending[:i]
            rest = "" if i < 0 else self._pending[i + len(fam.end) :]
            closing = "" if i < 0 else fam.end
        elif not final:
            return False
        else:
            body, rest, closing = self._pending, "", ""
        try:
            parsed = fam.body(body)
            if not parsed:
                raise ValueError("no tool call")
            new += [ToolCall(c["name"], c["arguments"], c["id"] or _new_id(fam.name)) for c in parsed]
        except (ValueError, TypeError):  # not a call after all: give the text back
            out.append(marker + body + closing)
        self._pending, self._marker = rest, None
        return bool(rest)

    def _scan_bare(self, out: list[str], new: list[ToolCall], final: bool) -> bool:
        """A reply that began like JSON: calls at its end if it is only calls; content as soon as it
        cannot be (its first value closed and is no offered call), so ordinary JSON still streams."""
        if not final:
            if _bare_verdict(self._pending, self.names) is False:
                out.append(self._pending)
                self._pending, self._marker = "", None
            return False
        try:
            parsed = _bare_calls(self._pending, self.names)
            new += [ToolCall(c["name"], c["arguments"], c["id"] or _new_id(self.family.name)) for c in parsed]
        except (ValueError, TypeError):
            out.append(self._pending)
        self._pending, self._marker = "", None
        return False


def _partial_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that begins one of `markers`."""
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best


# -- forcing a call: tool_choice "required" or a named function -------------------------------------


def choice(tool_choice: Any, tools: Sequence[dict[str, Any]] | None) -> str | None:
    """OpenAI's `tool_choice` -> None (free: "auto", "none" or absent), "required", or a function name."""
    if tool_choice in (None, "auto", "none"):
        return None
    names = [_tool_name(t) for t in tools or ()]
    if tool_choice == "required":
        if not names:
            raise InvalidRequest('"tool_choice" is "required" but no "tools" were given')
        return "required"
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str):
            if name not in names:
                raise InvalidRequest(f'"tool_choice" names {name!r}, which is not in "tools"')
            return name
    raise InvalidRequest('"tool_choice" must be "none", "auto", "required" or {"type": "function", ...}')


def _tool_name(tool: dict[str, Any]) -> str:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest("each tool needs a function with a name")
    return fn["name"]


def grammar(fam: Family, tools: Sequence[dict[str, Any]], forced: str, *, parallel: bool = True) -> str:
    """GBNF that makes the model write one call (a named function) or one or more (`required`)."""

    fns = [t["function"] for t in tools if forced in ("required", _tool_name(t))]
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"const": fn["name"]},
                fam.args_key: fn.get("parameters") or {"type": "object"},
            },
            "required": ["name", fam.args_key],
        }
        for fn in fns
    ]
    schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare Exceptions on schemas it cannot express
        raise InvalidRequest(f"cannot constrain to the tool's parameters schema: {exc}") from None
    gbnf = re.sub(r"^root\s*::=", "call ::=", gbnf, count=1, flags=re.M)
    many = parallel and forced == "required"
    if fam.name == "hermes":
        block = '"<tool_call>\\n" call "\\n</tool_call>"'
        root = f'{block} ("\\n" {block})*' if many else block
    elif fam.name == "mistral":
        root = '"[TOOL_CALLS][" call (", " call)* "]"' if many else '"[TOOL_CALLS][" call "]"'
    else:
        root = "call"
    return f"root ::= {root}\n{gbnf}"
