"""`nanocommander plugins install open-webui`: put the NanoCommander function into an Open WebUI instance.

The same file is installed twice: as `nanocommander` (the alpha Filter) and as `nanocommander_compare`
(the side-by-side Action; see the note at the top of open_webui/nanocommander_function.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from nanocommander import plugins

FUNCTION_FILE = Path(plugins.__file__).parent / "open_webui" / "nanocommander_function.py"
FUNCTIONS = (  # (id, name, description)
    ("nanocommander", "NanoCommander alpha", "Sends your alpha to NanoCommander composite models (Filter)."),
    (
        "nanocommander_compare",
        "NanoCommander side by side",
        "Button: the large, tuned and composite replies side by side (Action).",
    ),
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    plugins = sub.add_parser("plugins", help="install the front-end plugins (Open WebUI)")
    verbs = plugins.add_subparsers(dest="plugins_command", metavar="VERB")
    install = verbs.add_parser("install", help="install or update a plugin")
    install.add_argument("target", choices=["open-webui"], help="where to install")
    install.add_argument("--url", default="http://localhost:3000", help="Open WebUI address")
    install.add_argument(
        "--token", required=True, help="an Open WebUI admin API key or JWT (Settings > Account > API keys)"
    )
    install.add_argument(
        "--server-url",
        default=None,
        help="NanoCommander address as Open WebUI reaches it (sets the server_url valve)",
    )
    install.set_defaults(func=install_open_webui)
    plugins.set_defaults(func=lambda args: plugins.print_help(sys.stderr) or 2)


def install_open_webui(args: argparse.Namespace) -> int:
    content = FUNCTION_FILE.read_text(encoding="utf-8")
    base = args.url.rstrip("/") + "/api/v1/functions"
    for fid, name, description in FUNCTIONS:
        form = {"id": fid, "name": name, "meta": {"description": description}, "content": content}
        try:
            exists = _call("GET", f"{base}/id/{fid}", args.token) is not None
            if exists:
                _call("POST", f"{base}/id/{fid}/update", args.token, form)
            else:
                _call("POST", f"{base}/create", args.token, form)
            if args.server_url:
                _call("POST", f"{base}/id/{fid}/valves/update", args.token, {"server_url": args.server_url})
            state = _call("GET", f"{base}/id/{fid}", args.token) or {}
            if not state.get("is_active", True):
                _call("POST", f"{base}/id/{fid}/toggle", args.token)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            print(f"Error: could not install {fid} into {args.url}: {_reason(exc)}", file=sys.stderr)
            return 1
        print(f"{'updated' if exists else 'installed'} {fid}")
    print(
        "Enable them for your NanoCommander models (Workspace > Models > Filters/Actions) or mark them "
        "Global (Admin Panel > Functions).",
        file=sys.stderr,
    )
    return 0


def _call(method: str, url: str, token: str, body: dict | None = None) -> dict | None:
    """One JSON request; None for 404 (and 401 on GET, which Open WebUI answers for a missing function)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode() or "null"
    except urllib.error.HTTPError as exc:
        if method == "GET" and exc.code in (401, 404):  # Open WebUI: 401 "not found"
            return None
        raise
    return json.loads(text)


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        detail = exc.read().decode(errors="replace")[:300]
        return f"HTTP {exc.code} {detail}"
    return str(getattr(exc, "reason", exc))
