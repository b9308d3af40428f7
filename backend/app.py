"""The application's shared state keys and body reader, imported by every route module.

They live apart from server.py (the app factory and middleware), which imports the route
modules: keeping the keys here lets the routes import them without an import cycle.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from nanocommander.backend import guard as checks
from nanocommander.backend.config import Settings
from nanocommander.backend.manager import ModelManager

SETTINGS = web.AppKey("settings", Settings)
MANAGER = web.AppKey("manager", ModelManager)
VERSION = "0.6.0"  # reported as the Ollama-compatible API version: plain X.Y.Z


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is {}; anything else is a 400 (see guard)."""
    return checks.parse_body(await request.read())
