"""Chat templates: the Jinja2 template a GGUF carries, rendered the way llama.cpp renders it.

Ollama applies a Modelfile's SYSTEM and MESSAGE as defaults: the recipe's system
prompt is used when the conversation has none, and its messages come first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from nanocommander.errors import InvalidRequest

FALLBACK_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False
) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


MAX_PRODUCT = 1 << 20  # longest string or list a template may build with `*`


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, also refusing `'x' * 10**10` and `10 ** 10 ** 10` (a request's template is user code)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise SecurityError("exponent too large")
        if operator == "*":
            sizes = [len(x) for x in (left, right) if isinstance(x, (str, list, tuple))]
            counts = [x for x in (left, right) if isinstance(x, int)]
            if sizes and counts and sizes[0] * abs(counts[0]) > MAX_PRODUCT:
                raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    return env


_ENV = _environment()


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = ""):
        self.source = source or FALLBACK_CHATML
        self.bos_token, self.eos_token = bos_token, eos_token
        try:
            self._template = _ENV.from_string(self.source)
        except Exception as exc:  # syntax errors, and recursion on absurdly nested input
            raise InvalidRequest(f"chat template does not parse: {exc}") from None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Any] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                tools=list(tools) if tools else None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except Exception as exc:  # the template is code: whatever it raises is its own failure
            raise InvalidRequest(f"chat template failed: {type(exc).__name__}: {exc}") from None


def apply_defaults(
    messages: Sequence[Mapping[str, Any]], *, system: str | None, preset: Sequence[Mapping[str, str]] = ()
) -> list[dict[str, Any]]:
    """Recipe defaults as Ollama applies a Modelfile's: preset messages first, system only if none given."""
    out = [dict(m) for m in preset] + [dict(m) for m in messages]
    if system and not any(m.get("role") == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    for m in out:
        if not isinstance(m.get("role"), str):
            raise InvalidRequest("every message needs a string 'role'")
        content = m.get("content")
        if content is None:
            m["content"] = ""
        elif not isinstance(content, str):
            raise InvalidRequest("message 'content' must be a string")
    return out


def drop_starts(turns: Sequence[Mapping[str, Any]]) -> list[int]:
    """Where a conversation may start once its oldest turns are dropped: at its first turn, then at
    each later user turn, and at its last turn whatever it is (the newest turn is never dropped)."""
    starts, s = [0], 0
    while s < len(turns) - 1:
        s += 1
        while s < len(turns) - 1 and turns[s].get("role") != "user":
            s += 1
        starts.append(s)
    return starts


def fit_turns(
    render: Callable[[Sequence[Mapping[str, Any]]], str],
    tokenize: Callable[[str], list[int]],
    head: Sequence[Mapping[str, Any]],
    turns: Sequence[Mapping[str, Any]],
    budget: int,
) -> tuple[str, list[int], int]:
    """The longest newest part of `turns` (after `head`, the system prompt) whose prompt is under
    `budget` tokens: (text, ids, start). If even the newest turn alone does not fit, that one.

    Why not render and tokenize once per dropped turn: a long chat would cost one full
    tokenization per turn. The full chat is rendered once; when it does not fit, each turn's
    cost is estimated from its content's tokens, and only the estimated start and its neighbours
    are rendered exactly (the result is the same as dropping one turn at a time, because fewer
    turns never make a longer prompt).
    """
    text = render([*head, *turns])
    ids = tokenize(text)
    starts = drop_starts(turns)
    if len(ids) < budget or len(starts) == 1:
        return text, ids, 0
    content = [len(tokenize(str(t.get("content") or ""))) for t in turns]
    overhead = max(len(ids) - sum(content), 0) / (len(turns) + 1)  # template tokens around each turn
    dropped = [0.0]
    for s in range(len(turns)):
        dropped.append(dropped[-1] + content[s] + overhead)
    i = next((i for i, s in enumerate(starts) if len(ids) - dropped[s] < budget), len(starts) - 1)
    exact: dict[int, tuple[str, list[int]]] = {}

    def at(i: int) -> tuple[str, list[int]]:
        if i not in exact:
            t = render([*head, *turns[starts[i] :]])
            exact[i] = (t, tokenize(t))
        return exact[i]

    while len(at(i)[1]) >= budget and i < len(starts) - 1:  # estimated too few dropped
        i += 1
    while i > 1 and len(at(i - 1)[1]) < budget:  # estimated too many dropped
        i -= 1
    return *at(i), starts[i]
