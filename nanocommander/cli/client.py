"""`nanocommander ps` and `nanocommander stop MODEL`: ask the running server, as `ollama ps/stop` do.

Both talk HTTP to NANOCOMMANDER_HOST (default 127.0.0.1:11434), sending NANOCOMMANDER_API_KEY
as a bearer key when set: `ps` reads /api/ps, `stop` is a generate with keep_alive 0.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from nanocommander import units
from nanocommander.backend.config import parse_host
from nanocommander.errors import NanoCommanderError
from nanocommander.registry.name import canonical


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ps", help="list the models the running server has loaded")
    p.set_defaults(func=ps)
    p = sub.add_parser("stop", help="unload a model from the running server")
    p.add_argument("model")
    p.set_defaults(func=stop)


def base_url() -> str:

    host, port = parse_host(os.environ.get("NANOCOMMANDER_HOST"))
    if host in ("0.0.0.0", "::", ""):  # a wildcard bind is reached on loopback
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def call(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JSON request to the server; its error message (or the connection failure) as an error."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base_url() + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key := os.environ.get("NANOCOMMANDER_API_KEY"):
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=600) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except (ValueError, AttributeError):
            message = exc.reason
        raise NanoCommanderError(str(message)) from None
    except (urllib.error.URLError, OSError) as exc:
        raise NanoCommanderError(
            f"could not connect to nanocommander at {base_url()}; is `nanocommander serve` running? ({exc})"
        ) from None


def until(expires_at: str, now: datetime | None = None) -> str:
    try:
        when = datetime.fromisoformat(expires_at)
    except ValueError:
        return "?"
    seconds = (when - (now or datetime.now(when.tzinfo))).total_seconds()
    if seconds > 5 * 365 * 86400:
        return "Forever"
    if seconds <= 0:
        return "Stopping..."
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''} from now"
    return "Less than a second from now"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("    ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def ps(args: argparse.Namespace) -> int:
    models = call("GET", "/api/ps").get("models") or []
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "PID", "REPRODUCIBLE", "UNTIL"]]
    for m in models:
        gpu = m.get("size_vram", 0) / m["size"] if m.get("size") else 0
        processor = "100% CPU" if gpu == 0 else "100% GPU" if gpu >= 1 else f"{1 - gpu:.0%}/{gpu:.0%} CPU/GPU"
        rows.append(
            [
                m.get("name", ""),
                (m.get("digest") or "")[:12],
                units.size(int(m.get("size", 0))),
                processor,
                str(m.get("context_length", "")),
                str(m.get("runner_pid") or "-"),  # the model's runner process (- : in the server's own)
                "yes" if ((m.get("composite") or {}).get("deterministic") or {}).get("enabled") else "no",
                until(m.get("expires_at", "")),
            ]
        )
    print(table(rows))
    return 0


def stop(args: argparse.Namespace) -> int:
    """Unload a loaded model (after its running requests end); a model not loaded is an error, as in ollama."""

    loaded = {m.get("name") for m in call("GET", "/api/ps").get("models") or []}
    if canonical(args.model) not in loaded:
        raise NanoCommanderError(f'couldn\'t find model "{args.model}" to stop')
    call("POST", "/api/generate", {"model": args.model, "keep_alive": 0})
    return 0
