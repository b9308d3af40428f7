"""
title: NanoCommander
author: NanoCommander
author_url: https://github.com/nanocommander/nanocommander
version: 0.1.0
required_open_webui_version: 0.5.0
description: Alpha control for NanoCommander composite models (large + alpha * (tuned - base)), and a button that shows the large, tuned and composite replies side by side.
"""

# One file, two Open WebUI functions. Open WebUI loads a function's first class among Pipe, Filter
# and Action, in that order. Installed under any id, this file is the Filter (the alpha knob);
# installed under an id ending in "_compare" (module name "function_<id>"), the Filter class is
# dropped at the bottom of the file and it becomes the side-by-side Action.
# Needs only pydantic (provided by Open WebUI) and aiohttp (a dependency of Open WebUI).

import html
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, Field

MEMBERS = ("large", "tuned", "composite")


class Valves(BaseModel):
    """Admin settings, shared by the Filter and the Action."""

    server_url: str = Field("http://127.0.0.1:11434", description="NanoCommander server (Ollama API)")
    api_key: str = Field("", description="NANOCOMMANDER_API_KEY, if the server requires one")
    default_alpha: float = Field(1.0, ge=0.0, le=4.0, description="alpha used when the user sets none")
    model_prefixes: str = Field(
        "",
        description="Comma-separated model-name prefixes that are NanoCommander models; empty: ask the "
        "server for its model list (GET /api/tags, cached for a minute)",
    )
    connection_prefix: str = Field(
        "", description="The 'Prefix ID' of the Open WebUI connection to NanoCommander, if it has one"
    )
    connection: Literal["ollama", "openai"] = Field(
        "ollama",
        description="How NanoCommander is connected in Open WebUI: as an Ollama API (alpha goes in "
        "options) or as an OpenAI API (alpha goes at the top level of the request)",
    )
    seed: int | None = Field(
        42,
        description="One sampling seed for all three compared replies, so they differ "
        "only by model; empty: random",
    )
    timeout: float = Field(300.0, gt=0, description="Seconds to wait for each reply in the comparison")


class UserValves(BaseModel):
    """Each user's own settings."""

    alpha: float | None = Field(
        None,
        ge=0.0,
        le=4.0,
        description="How strongly the tuned model steers the large one (0 = large model alone); empty: admin "
        "default",
    )


class _Common:
    def __init__(self) -> None:
        self.valves = Valves()
        self._names: tuple[float, set[str]] = (-1e9, set())

    def server_model(self, model: str) -> str:
        """Open WebUI's model id as the server knows it: without the connection's prefix."""
        prefix = self.valves.connection_prefix.strip()
        if prefix and model.startswith(prefix + "."):
            return model[len(prefix) + 1 :]
        return model

    def is_nanocommander(self, model: str) -> bool:
        name = self.server_model(model or "")
        if not name or (self.valves.connection_prefix.strip() and name == model):
            return False  # a prefix is configured and this model lacks it: another connection's model
        prefixes = [p.strip() for p in self.valves.model_prefixes.split(",") if p.strip()]
        if prefixes:
            return any(name.startswith(p) for p in prefixes)
        names = self.server_names()
        return name in names or (":" not in name and f"{name}:latest" in names)

    def server_names(self) -> set[str]:
        """Model names the server lists, cached for 60 s (10 s when the server cannot be reached)."""
        stamp, names = self._names
        if time.monotonic() - stamp < (60 if names else 10):  # retry an unreachable server sooner
            return names
        try:
            request = urllib.request.Request(
                self.valves.server_url.rstrip("/") + "/api/tags", headers=self.headers()
            )
            with urllib.request.urlopen(request, timeout=3) as response:
                models = json.load(response).get("models", [])
            names = {m.get("name") or m.get("model") for m in models} - {None}
        except (OSError, ValueError):
            names = set()
        self._names = (time.monotonic(), names)
        return names

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.valves.api_key}"} if self.valves.api_key else {}

    def alpha_for(self, user: dict | None) -> float:
        valves = (user or {}).get("valves")
        alpha = valves.get("alpha") if isinstance(valves, dict) else getattr(valves, "alpha", None)
        return float(self.valves.default_alpha if alpha is None else alpha)


class Filter(_Common):
    """Puts the alpha knob into every request for a NanoCommander model; other models pass untouched."""

    Valves = Valves
    UserValves = UserValves

    def inlet(self, body: dict, __user__: dict | None = None) -> dict:
        if not self.is_nanocommander(body.get("model", "")):
            return body
        alpha = self.alpha_for(__user__)
        if self.valves.connection == "openai":
            body["alpha"] = alpha
        else:
            body["options"] = {**(body.get("options") or {}), "alpha": alpha}
        return body


class Action(_Common):
    """A message button: the same reply from the large model alone, the tuned model and the composite."""

    Valves = Valves
    UserValves = UserValves

    async def action(
        self, body: dict, __user__: dict | None = None, __event_emitter__: Callable[[dict], Any] | None = None
    ) -> dict:
        messages = prompt_messages(body.get("messages") or [])
        model = self.server_model(body.get("model", ""))
        if not messages:
            return await _emit_done(__event_emitter__, "No user message to answer.")
        alpha = self.alpha_for(__user__)
        replies: dict[str, str] = {}
        url = self.valves.server_url.rstrip("/") + "/api/chat"
        timeout = aiohttp.ClientTimeout(total=self.valves.timeout)
        async with aiohttp.ClientSession(timeout=timeout, headers=self.headers()) as session:
            for member in MEMBERS:
                await _status(__event_emitter__, f"Asking the {member} model...", False)
                payload = {
                    "model": model,
                    "messages": messages,
                    "stream": False,
                    "options": {"member": member, "alpha": alpha},
                }
                if self.valves.seed is not None:
                    payload["options"]["seed"] = self.valves.seed
                try:
                    async with session.post(url, json=payload) as response:
                        data = await response.json(content_type=None)
                    replies[member] = (
                        (data.get("message") or {}).get("content", "")
                        if response.status == 200
                        else f"(error {response.status}: {data.get('error', data)})"
                    )
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    replies[member] = f"(no reply: {exc or type(exc).__name__})"
        markdown = side_by_side(replies, alpha)
        return await _emit_done(__event_emitter__, markdown)


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The conversation up to and including the last user message, as plain-text Ollama messages."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    out = []
    for message in messages[: last + 1]:
        content = message.get("content", "")
        if isinstance(content, list):  # OpenAI-style parts: keep the text
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append({"role": message.get("role", "user"), "content": content})
    return out


def side_by_side(replies: dict[str, str], alpha: float) -> str:
    """A markdown table, one column per member."""

    def cell(text: str) -> str:
        text = "<br>".join(html.escape(text.strip() or "(empty)").replace("|", "&#124;").splitlines())
        return "".join(
            ch for ch in text if ch.isprintable() or ch == " "
        )  # control bytes would break the row

    heads = {"large": "Large alone", "tuned": "Tuned (small)", "composite": f"Composite (alpha {alpha:g})"}
    return (
        "\n\n### NanoCommander: side by side\n\n"
        f"| {' | '.join(heads[m] for m in MEMBERS)} |\n|{'---|' * len(MEMBERS)}\n"
        f"| {' | '.join(cell(replies.get(m, '')) for m in MEMBERS)} |\n"
    )


async def _status(emit: Callable | None, text: str, done: bool) -> None:
    if emit:
        await emit({"type": "status", "data": {"description": text, "done": done}})


async def _emit_done(emit: Callable | None, content: str) -> dict:
    if emit:
        await emit({"type": "message", "data": {"content": content}})
    await _status(emit, "Comparison done", True)
    return {"content": content}


if __name__.endswith("_compare"):  # installed as the Action (see the note at the top)
    del Filter
