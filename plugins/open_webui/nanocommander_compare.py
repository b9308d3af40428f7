"""
title: NanoCommander side by side
author: NanoCommander
author_url: https://github.com/nanocommander/nanocommander
version: 0.2.0
required_open_webui_version: 0.5.0
description: A message button that shows the large model alone, the tuned model and the NanoCommander composite answering the same prompt, side by side, at your alpha. Install with the id `nanocommander_compare`, next to the nanocommander_filter.py Filter (id `nanocommander`).
"""

# An Action function (a button under each reply), a file of its own: Open WebUI instantiates the first
# of Pipe, Filter, Action a file defines and gives the module a random name (`function_<id>_<hex>` in
# 0.12), so the kind cannot be chosen by install id. The comparison comes back in the action's return
# value, `{"messages": [{"id", "content"}]}`: the page writes that into the message and, in 0.12, into
# the message's `output`, which is what it draws (a `message` event only appends to `content`, which
# 0.12 does not draw once a reply has an `output`). The user's alpha is read from the Filter's user
# valves (the knob users already set); the Filter's id is an admin valve here.
# Needs only pydantic (provided by Open WebUI) and aiohttp (a dependency of Open WebUI).

import inspect
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
from pydantic import BaseModel, Field

MEMBERS = ("large", "tuned", "composite")
TABLE_HEADING = "### NanoCommander: side by side"
MARKDOWN_SPECIALS = set("\\`*_[]<>|#~$")

# --- shared: identical in nanocommander_filter.py and nanocommander_compare.py ---------------------


class ServerValves(BaseModel):
    """The admin settings both functions need to find and address the NanoCommander server."""

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


class UserValves(BaseModel):
    """Each user's own settings (kept by the Filter; the compare button reads the Filter's)."""

    alpha: float | None = Field(
        None,
        ge=0.0,
        le=4.0,
        description="How strongly the tuned model steers the large one (0 = large model alone); empty: admin "
        "default",
    )


class _Common:
    def __init__(self) -> None:
        self.valves = self.Valves()
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

    def alpha_for(self, valves: object) -> float:
        """The user's alpha from their valves (a model or a dict), else the admin default."""
        alpha = valves.get("alpha") if isinstance(valves, dict) else getattr(valves, "alpha", None)
        return float(self.valves.default_alpha if alpha is None else alpha)


# --- end of shared -----------------------------------------------------------------------------


class Valves(ServerValves):
    """The button's admin settings."""

    filter_id: str = Field(
        "nanocommander",
        description="Function id of the NanoCommander alpha Filter, whose user valves hold alpha",
    )
    seed: int | None = Field(
        42,
        description="One sampling seed for all three compared replies, so they differ "
        "only by model; empty: random",
    )
    num_predict: int | None = Field(
        256, ge=1, description="Most tokens in each compared reply (three replies per click); empty: no limit"
    )
    timeout: float = Field(300.0, gt=0, description="Seconds to wait for each reply in the comparison")


class Action(_Common):
    """A message button: the same reply from the large model alone, the tuned model and the composite.

    No UserValves of its own: one alpha per user, the Filter's, so the button shows what the chat sends.
    """

    Valves = Valves

    async def action(
        self,
        body: dict,
        __user__: dict | None = None,
        __event_emitter__: Callable[[dict], Any] | None = None,
    ) -> dict:
        messages = prompt_messages(body.get("messages") or [])
        model = self.server_model(body.get("model", ""))
        if not messages:
            return await _done(__event_emitter__, body, "No user message to answer.")
        alpha = self.alpha_for(await self.user_valves(__user__))
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
                if self.valves.num_predict is not None:
                    payload["options"]["num_predict"] = self.valves.num_predict
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
        return await _done(__event_emitter__, body, side_by_side(replies, alpha))

    async def user_valves(self, user: dict | None) -> object:
        """The user's valves of the Filter (`filter_id`), read from Open WebUI's store; else what came in.

        Open WebUI hands an Action the valves of its own id only, and this Action has none.
        """
        user = user or {}
        if user.get("valves") is not None:  # a caller (or an older Open WebUI) that passes them
            return user["valves"]
        if not user.get("id"):
            return None
        try:
            from open_webui.models.functions import Functions  # only inside Open WebUI
        except ImportError:
            return None
        try:
            stored = Functions.get_user_valves_by_id_and_user_id(self.valves.filter_id, user["id"])
            stored = await stored if inspect.isawaitable(stored) else stored  # async from 0.7 on
            return UserValves(**(stored or {}))
        except Exception:  # noqa: BLE001 - a bad stored value must not break the button: admin default
            return None


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
    """A markdown table, one column per member.

    Cells use backslash escapes, not HTML: 0.12's page shows `&#124;` and `<br>` in a table cell
    literally (seen in the real run), and a bare `<` could open a tag.
    """

    def cell(text: str) -> str:
        text = " ".join(line.strip() for line in (text.strip() or "(empty)").splitlines() if line.strip())
        text = "".join(ch for ch in text if ch.isprintable() or ch == " ")  # control bytes break the row
        return "".join("\\" + ch if ch in MARKDOWN_SPECIALS else ch for ch in text)

    heads = {"large": "Large alone", "tuned": "Tuned (small)", "composite": f"Composite (alpha {alpha:g})"}
    return (
        f"\n\n{TABLE_HEADING}\n\n"
        f"| {' | '.join(heads[m] for m in MEMBERS)} |\n|{'---|' * len(MEMBERS)}\n"
        f"| {' | '.join(cell(replies.get(m, '')) for m in MEMBERS)} |\n"
    )


async def _status(emit: Callable | None, text: str, done: bool) -> None:
    if emit:
        await emit({"type": "status", "data": {"description": text, "done": done}})


async def _done(emit: Callable | None, body: dict, table: str) -> dict:
    """The replied-to message with the table appended, as the page applies an action's result."""
    await _status(emit, "Comparison done", True)
    target = body.get("id")
    shown = next((m.get("content") for m in body.get("messages") or [] if m.get("id") == target), None)
    before = (shown if isinstance(shown, str) else "").split(TABLE_HEADING)[
        0
    ]  # one table, even on a 2nd click
    content = before.rstrip() + table
    out: dict = {"content": content}
    if target:
        out["messages"] = [{"id": target, "content": content}]
    return out
