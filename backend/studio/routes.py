"""GET /studio: the playground's static files, behind the same Origin/Host guard as the API.

The page itself holds no secret, so it is served without the API key (a browser cannot send an
Authorization header when it navigates); every API call the page makes sends the key the user
types. Only the files named in ASSETS are served (no path from the request touches the file
system), with a content security policy that allows nothing but this origin.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

HERE = Path(__file__).parent
PREFIX = "/studio"
ASSETS = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "chart.js": "text/javascript",
    "style.css": "text/css",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def public(path: str) -> bool:
    """Whether `path` is one of the playground's files (served without the API key)."""
    return path in (PREFIX, PREFIX + "/") or (
        path.startswith(PREFIX + "/") and path[len(PREFIX) + 1 :] in ASSETS
    )


async def asset(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    if name not in ASSETS:
        raise web.HTTPNotFound(reason=f"no such file in the studio: {name}")
    body = (HERE / name).read_bytes()
    return web.Response(body=body, content_type=ASSETS[name], charset="utf-8", headers=HEADERS)


def setup_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX, asset)
    app.router.add_get(PREFIX + "/", asset)
    app.router.add_get(PREFIX + "/{name}", asset)
