"""
title: NanoCommander alpha
author: NanoCommander
author_url: https://github.com/nanocommander/nanocommander
version: 0.2.0
required_open_webui_version: 0.5.0
description: Sends each user's alpha to NanoCommander composite models (large + alpha * (tuned - base)). Install with the id `nanocommander`; the side-by-side button is the separate nanocommander_compare.py.
"""

# A Filter function. Open WebUI instantiates the first of Pipe, Filter, Action a function's file
# defines (utils/plugin.py, load_function_module_by_id), and names the module
# `function_<id>_<random hex>` (0.12), so one file cannot serve as both kinds: the button lives in
# nanocommander_compare.py. The block between the "shared" markers is the same in both files (a test
# checks it): each file is executed alone, so neither can import the other.
# Needs only pydantic (provided by Open WebUI); no network library beyond urllib.

import json
import time
import urllib.request
from typing import Literal

from pydantic import BaseModel, Field

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
    """The Filter's admin settings."""

    connection: Literal["ollama", "openai"] = Field(
        "ollama",
        description="How NanoCommander is connected in Open WebUI: as an Ollama API (alpha goes in "
        "options) or as an OpenAI API (alpha goes at the top level of the request)",
    )


class Filter(_Common):
    """Puts the alpha knob into every request for a NanoCommander model; other models pass untouched."""

    Valves = Valves
    UserValves = UserValves

    def inlet(self, body: dict, __user__: dict | None = None) -> dict:
        if not self.is_nanocommander(body.get("model", "")):
            return body
        alpha = self.alpha_for((__user__ or {}).get("valves"))
        if self.valves.connection == "openai":
            body["alpha"] = alpha
        else:
            body["options"] = {**(body.get("options") or {}), "alpha": alpha}
        return body
