"""The aiohttp application: settings, model manager, middleware, and one route module per protocol.

Each protocol folder (ollama/, openai/, kobold/) has `routes.setup_routes(app)` and
`api.error_body(status, message)` for its own error envelope.
The middleware picks the envelope by path, so no handler formats errors by hand.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from nanocommander.backend import accesslog, shutdown
from nanocommander.backend import guard as checks
from nanocommander.backend.app import MANAGER, SETTINGS
from nanocommander.backend.config import Settings
from nanocommander.backend.generations import GENERATIONS, Generations
from nanocommander.backend.kobold import api as kobold_api
from nanocommander.backend.kobold import routes as kobold_routes
from nanocommander.backend.manager import Catalog, ModelManager
from nanocommander.backend.ollama import api as ollama_api
from nanocommander.backend.ollama import routes as ollama_routes
from nanocommander.backend.openai import api as openai_api
from nanocommander.backend.openai import routes as openai_routes
from nanocommander.backend.studio import routes as studio_routes
from nanocommander.engine.request.recipe import Recipe
from nanocommander.errors import (
    AdapterMismatch,
    ContextOverflow,
    DigestMismatch,
    InsufficientMemory,
    InvalidName,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    NanoCommanderError,
    RecipeError,
    ReferenceNotFound,
    RpcServerLost,
    ServerBusy,
    TokenizerMismatch,
)

log = logging.getLogger("nanocommander.server")

STATUS = [  # (exception class, HTTP status); first match wins
    (ModelNotFound, 404),
    (ReferenceNotFound, 404),
    (ServerBusy, 503),
    (RpcServerLost, 503),  # a machine holding the model's layers went away; the next request reloads
    (InsufficientMemory, 500),  # Ollama answers 500 when a model needs more memory than is free
    (ContextOverflow, 400),
    (InvalidName, 400),
    (InvalidRequest, 400),
    (RecipeError, 400),
    (TokenizerMismatch, 400),
    (DigestMismatch, 400),  # an upload whose bytes do not hash to the digest named
    (AdapterMismatch, 400),  # a family member whose adapter does not fit the base
    (ModelLoadError, 500),
    (NanoCommanderError, 500),
]


def status_for(exc: Exception) -> int:
    return next((code for cls, code in STATUS if isinstance(exc, cls)), 500)


def protocol_of(path: str) -> str:
    if path.startswith("/v1/") or path == "/v1":
        return "openai"
    if path.startswith(("/api/v1", "/api/extra", "/api/latest", "/api/admin", "/props")):
        return "kobold"
    return "ollama"


def error_response(path: str, status: int, message: str) -> web.Response:
    """The error in the envelope of the protocol that `path` belongs to."""
    kind = protocol_of(path)
    if kind == "openai":
        body: Any = openai_api.error_body(status, message)
    elif kind == "kobold":
        body = kobold_api.error_body(status, message)
    else:
        body = ollama_api.error_body(status, message)
    return web.json_response(body, status=status)


@web.middleware
async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Host and Origin checks, CORS, the optional bearer key, and every error in the protocol's envelope."""
    settings = request.app[SETTINGS]
    refused = checks.refusal(request.headers, settings.host, settings.origins)
    if refused:  # before any handler, for every method: a cross-site POST must not run at all
        return error_response(request.path, 403, refused)
    origin = request.headers.get("Origin")
    cors = {}
    if origin:
        cors = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS, HEAD",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, "
            "OpenAI-Beta, x-stainless-*, apikey, genkey",
            "Vary": "Origin",
        }
    if request.method == "OPTIONS":
        return web.Response(status=204 if cors else 403, headers=cors)
    draining = request.app[shutdown.DRAINING]
    try:
        if (
            settings.api_key
            and request.path not in ("/", "/api/version")
            and not studio_routes.public(request.path)
        ):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {settings.api_key}".encode()):
                return _with(
                    error_response(request.path, 401, "unauthorized: missing or invalid API key"), cors
                )
        with draining.track():
            response = await handler(request)
    except asyncio.CancelledError:
        if not draining.stopping:  # the client went away
            raise
        shutdown.absorb_cancel()  # SIGTERM before the answer started: a 503 in the protocol's shape
        response = error_response(request.path, 503, shutdown.MESSAGE)
    except web.HTTPRequestEntityTooLarge:
        response = error_response(
            request.path, 413, f"request body too large (limit {settings.max_body} bytes)"
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(request.path, exc.status, exc.reason or "error")
    except NanoCommanderError as exc:
        response = error_response(request.path, status_for(exc), str(exc))
    except Exception as exc:  # a bug: log it, answer in the protocol's shape, never a traceback
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error_response(request.path, 500, f"internal error: {type(exc).__name__}: {exc}")
    if not response.prepared:
        _with(response, cors)
    return response


def _with(response: web.StreamResponse, headers: dict[str, str]) -> web.StreamResponse:
    response.headers.update(headers)
    return response


async def _lifecycle(app: web.Application):
    await app[MANAGER].start()
    yield
    await app[MANAGER].stop()


def create_app(settings: Settings, recipes: list[Recipe] | None = None) -> web.Application:

    app = web.Application(middlewares=[accesslog.access_log, guard], client_max_size=settings.max_body)
    app[SETTINGS] = settings
    app[MANAGER] = ModelManager(settings, Catalog(recipes or []))
    app[GENERATIONS] = Generations()  # Kobold and OpenAI completions register theirs by genkey
    app.cleanup_ctx.append(_lifecycle)
    shutdown.setup(app)
    ollama_routes.setup_routes(app)
    openai_routes.setup_routes(app)
    kobold_routes.setup_routes(app)
    studio_routes.setup_routes(app)
    return app
