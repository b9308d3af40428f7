"""One access-log line per request, and request bodies when debugging.

The line names what an operator asks first when a front end misbehaves: which route,
which status, which model at which alpha, how many tokens, how long:

    127.0.0.1 "POST /v1/completions" 200 model=tiny:latest alpha=0.5 tokens=674+350 1.234s

(tokens = prompt + generated). The middleware keeps a per-request dict in a context
variable; the model manager fills it through `note()` as a generation starts and ends,
so no protocol module formats log lines. Bodies are logged at debug level
(`serve --verbose` or NANOCOMMANDER_DEBUG=1), up to BODY_LIMIT bytes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("nanocommander.access")
BODY_LIMIT = 64 * 1024
_CURRENT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("nc_request", default=None)


def note(**fields: Any) -> None:
    """Add facts (model, alpha, member, tokens) to the current request's log line; no-op outside one."""
    info = _CURRENT.get()
    if info is not None:
        info.update({k: v for k, v in fields.items() if v is not None})


def line(request: web.BaseRequest, status: int, seconds: float, info: dict[str, Any]) -> str:
    parts = [f'{request.remote or "-"} "{request.method} {request.path}" {status}']
    if "model" in info:
        parts.append(f"model={info['model']}")
    if "alpha" in info:
        parts.append(f"alpha={info['alpha']:g}")
    if info.get("member", "composite") != "composite":
        parts.append(f"member={info['member']}")
    if "tokens" in info:
        parts.append("tokens={}+{}".format(*info["tokens"]))
    parts.append(f"{seconds:.3f}s")
    return " ".join(parts)


@web.middleware
async def access_log(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    info: dict[str, Any] = {}
    token = _CURRENT.set(info)
    t0 = time.perf_counter()
    status = 500
    try:
        if log.isEnabledFor(logging.DEBUG) and request.body_exists:
            await _log_body(request)
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's code for it)
        raise
    finally:
        _CURRENT.reset(token)
        log.info(line(request, status, time.perf_counter() - t0, info))


async def _log_body(request: web.Request) -> None:
    size = request.content_length
    if size is None or size > min(BODY_LIMIT, request.client_max_size):
        log.debug('"%s %s" body: %s bytes, not shown', request.method, request.path, size or "unknown")
        return
    body = await request.read()  # aiohttp keeps it for the handler's own read
    log.debug('"%s %s" body: %s', request.method, request.path, body.decode("utf-8", "replace"))


def debug_from_env(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return env.get("NANOCOMMANDER_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def configure(verbose: bool) -> None:
    """Log to stderr: info (one line per request), or debug for NanoCommander's loggers (bodies too)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nanocommander").setLevel(logging.DEBUG if verbose else logging.INFO)
