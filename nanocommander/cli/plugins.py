"""`nanocommander plugins install open-webui`: put the NanoCommander functions into an Open WebUI instance.

Two files, two functions: `nanocommander` (the alpha Filter, open_webui/nanocommander_filter.py) and
`nanocommander_compare` (the side-by-side Action, open_webui/nanocommander_compare.py). Open WebUI picks
a function's kind from the classes its file defines, never from its id, hence one file each.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from nanocommander import plugins

FUNCTION_DIR = Path(plugins.__file__).parent / "open_webui"
FUNCTIONS = (  # (id, file, name, description)
    (
        "nanocommander",
        FUNCTION_DIR / "nanocommander_filter.py",
        "NanoCommander alpha",
        "Sends your alpha to NanoCommander composite models (Filter).",
    ),
    (
        "nanocommander_compare",
        FUNCTION_DIR / "nanocommander_compare.py",
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
        "--token",
        required=True,
        help="an Open WebUI admin API key (sk-..., Settings > Account; API keys must be enabled first: Admin > "
        "Settings > General, or ENABLE_API_KEYS=true) or a JWT",
    )
    install.add_argument(
        "--server-url",
        default=None,
        help="NanoCommander address as Open WebUI reaches it (sets the server_url valve; other valves kept)",
    )
    install.add_argument(
        "--global",
        dest="make_global",
        action="store_true",
        help="mark both functions Global (on for every model) instead of enabling them per model",
    )
    install.set_defaults(func=install_open_webui)
    plugins.set_defaults(func=lambda args: plugins.print_help(sys.stderr) or 2)


def install_open_webui(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/") + "/api/v1/functions"
    for fid, path, name, description in FUNCTIONS:
        form = {
            "id": fid,
            "name": name,
            "meta": {"description": description},
            "content": path.read_text(encoding="utf-8"),
        }
        try:
            exists = _call("GET", f"{base}/id/{fid}", args.token) is not None
            if exists:  # the update reloads the file, so an old install changes kind (Filter -> Action)
                _call("POST", f"{base}/id/{fid}/update", args.token, form)
            else:
                _call("POST", f"{base}/create", args.token, form)
            if args.server_url:  # Open WebUI replaces the whole set: merge into the current valves
                current = _call("GET", f"{base}/id/{fid}/valves", args.token) or {}
                merged = {**current, "server_url": args.server_url}
                _call("POST", f"{base}/id/{fid}/valves/update", args.token, merged)
            state = _call("GET", f"{base}/id/{fid}", args.token) or {}
            if not state.get("is_active", True):
                _call("POST", f"{base}/id/{fid}/toggle", args.token)
            if args.make_global and not state.get("is_global", False):
                _call("POST", f"{base}/id/{fid}/toggle/global", args.token)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            print(f"Error: could not install {fid} into {args.url}: {_reason(exc)}", file=sys.stderr)
            return 1
        print(f"{'updated' if exists else 'installed'} {fid}")
    if not args.make_global:
        print(
            "Enable them for your NanoCommander models (Workspace > Models > Filters/Actions) or mark "
            "them Global (Admin Panel > Functions, or --global).",
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
