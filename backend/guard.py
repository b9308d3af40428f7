"""Checks the server's one middleware runs before any handler: who may call, and what a body may hold.

* Origin: a browser names the page that sent a request in `Origin`. A page on another
  site can still send "simple" POSTs (no preflight), so a disallowed Origin gets a 403
  on every method, not just a missing CORS header. Allowed: NANOCOMMANDER_ORIGINS (`*`
  and `*` patterns such as `https://*.example.com`), http(s) pages on localhost and
  loopback addresses (any port), and the schemes browser extensions and desktop apps
  use (Ollama's defaults plus extension schemes).
* Host: on a loopback bind, a `Host` that is not a loopback name or address means a
  page whose DNS name was re-pointed at 127.0.0.1 (DNS rebinding); 403. Hosts named in
  NANOCOMMANDER_ORIGINS are also accepted. A bind beyond loopback (which needs a key)
  accepts any Host.
* Bodies: JSON nested deeper than MAX_DEPTH, and text with a lone UTF-16 surrogate
  (valid JSON, not encodable as UTF-8), are 400s naming the field.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

from nanocommander.errors import InvalidRequest

MAX_DEPTH = 100  # JSON nesting: far beyond any schema or message list a client sends
APP_SCHEMES = frozenset(
    {
        "app",
        "file",
        "tauri",
        "vscode-webview",
        "vscode-file",
        "chrome-extension",
        "moz-extension",
        "safari-web-extension",
    }
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_AUTHORITY = re.compile(r"(?:\[([0-9a-f:.]+)\]|([a-z0-9._~-]+))(?::[0-9]{0,5})?")
_AUTHORITY_PATTERN = re.compile(r"(?:\[([0-9a-f:.*]+)\]|([a-z0-9._~*-]+))(?::[0-9*]{0,5})?")


def _hostname(authority: str, *, pattern: bool = False) -> str | None:
    """The lower-cased host of `host[:port]` or `[v6]:port`; None for anything else (userinfo,
    paths, odd characters). `pattern` also lets `*` through, for NANOCOMMANDER_ORIGINS entries."""
    match = (_AUTHORITY_PATTERN if pattern else _AUTHORITY).fullmatch(authority.strip().lower())
    return (match.group(1) or match.group(2)) if match else None


def is_loopback(host: str) -> bool:
    """The one loopback rule (Host headers, origins, bind addresses): localhost, *.localhost
    (browsers and RFC 6761 pin it to loopback) or a loopback address, `[::1]` included."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    """Whether a browser page of `origin` may call the server (see the module docstring)."""
    origin = origin.strip().lower()
    if "*" in allowed or any(fnmatchcase(origin, pattern.lower()) for pattern in allowed):
        return True
    scheme, sep, authority = origin.partition("://")
    if sep and scheme in APP_SCHEMES:
        return True
    host = _hostname(authority)
    return scheme in ("http", "https") and host is not None and is_loopback(host)


def host_allowed(host_header: str | None, bind_host: str, allowed: Sequence[str]) -> bool:
    """Whether a request's `Host` may reach a server bound to `bind_host` (DNS rebinding guard)."""
    if not is_loopback(bind_host.lower()) or not host_header:  # a LAN bind, or not a browser
        return True
    host = _hostname(host_header)
    if host is None:
        return False
    if is_loopback(host) or "*" in allowed:
        return True
    names = (_hostname(entry.partition("://")[2], pattern=True) for entry in allowed)
    return any(fnmatchcase(host, name) for name in names if name)


def refusal(headers: Any, bind_host: str, origins: Sequence[str]) -> str | None:
    """Why the request must be refused with a 403, or None; `headers` is the request's headers."""
    host = headers.get("Host")
    if not host_allowed(host, bind_host, origins):
        return (
            f"forbidden: Host {host!r} is not a loopback name (DNS rebinding guard); to use another name, "
            "add its origin to NANOCOMMANDER_ORIGINS or bind to a LAN address with NANOCOMMANDER_API_KEY"
        )
    origin = headers.get("Origin")
    if origin is not None and not origin_allowed(origin, origins):
        return f"forbidden: origin {origin!r} is not allowed; add it to NANOCOMMANDER_ORIGINS to allow it"
    return None


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object: empty is {}; bad JSON, too deep, lone surrogates: 400."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"invalid JSON body: {exc}") from None
    except RecursionError:
        raise InvalidRequest(f"invalid JSON body: nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the JSON body must be an object")
    check_tree(body)
    return body


def check_tree(value: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings holding a lone surrogate, naming where."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                raise InvalidRequest(
                    f'"{_field(where)}" holds a lone UTF-16 surrogate, which is not text; send valid Unicode'
                )
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth >= MAX_DEPTH:
            raise InvalidRequest(
                f'invalid JSON body: "{_field(where)}" is nested deeper than {MAX_DEPTH} levels'
            )
        if isinstance(item, dict):
            for key, sub in item.items():
                path = f"{where}.{key}" if where else key
                if not key.isascii() and _SURROGATE.search(key):
                    raise InvalidRequest(f'a key in "{_field(where)}" holds a lone UTF-16 surrogate')
                stack.append((sub, path, depth + 1))
        else:
            stack.extend((sub, f"{where}[{i}]", depth + 1) for i, sub in enumerate(item))


def _field(where: str) -> str:
    """A field path for an error message: the body itself when empty, shortened when huge."""
    return (where[:120] + "...") if len(where) > 120 else where or "body"
