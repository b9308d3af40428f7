"""A small Hugging Face Hub look-alike for tests: a real aiohttp server on 127.0.0.1 in a thread.

It serves the endpoints huggingface_hub 2.4 calls for what the registry does
(read from its source: hf_api.py, file_download.py, _commit_api.py):

    GET  /api/models/{repo}[/revision/{rev}]     model_info: sha + siblings
    HEAD /{repo}/resolve/{rev}/{file}            get_hf_file_metadata: ETag, X-Repo-Commit, X-Linked-*
    GET  /{repo}/resolve/{rev}/{file}            http_get, with Range -> 206
    POST /api/repos/create                       create_repo (409 when it exists)
    POST /api/validate-yaml                      create_commit checks README front matter
    POST /api/models/{repo}/preupload/{rev}      upload modes: always "regular" (inline base64)
    POST /api/models/{repo}/commit/{rev}         NDJSON commit: header, file, deletedFile

`.gguf` files behave like LFS files on the real Hub: their ETag is the content's
sha256. Tests inspect `served` (bytes sent per file), `gets` and `heads`, and inject
faults: `cut_after[file] = n` sends n bytes and then drops the connection, once (and
with `fail_after_cut`, every later GET of that file gets 503 until `fail_gets` is
cleared: an outage); `fail_gets` answers 503 for those files; `corrupt[file]` serves
other bytes than the ETag promises; `chunk_delay` slows every chunk down.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field

from aiohttp import web

CHUNK = 16 * 1024


@dataclass
class Repo:
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)

    @property
    def head(self) -> tuple[str, dict[str, bytes]]:
        return self.commits[-1]

    def at(self, rev: str) -> tuple[str, dict[str, bytes]] | None:
        if rev == "main":
            return self.head if self.commits else None
        return next((c for c in self.commits if c[0] == rev), None)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.served: dict[str, int] = defaultdict(int)
        self.gets: list[tuple[str, str | None]] = []  # (file, Range header)
        self.heads: list[str] = []
        self.auth: set[str] = set()  # Authorization headers seen
        self.commits_received: list[list[dict]] = []
        self.cut_after: dict[str, int] = {}
        self.fail_gets: set[str] = set()
        self.fail_after_cut = False
        self.corrupt: dict[str, bytes] = {}
        self.chunk_delay = 0.0
        self.url = ""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- content -------------------------------------------------------------------------------

    def commit(self, repo: str, files: dict[str, bytes], *, replace: bool = False) -> str:
        """Add (or with `replace`, set) files in a new commit of `repo`; returns the commit sha."""
        with self._lock:
            r = self.repos.setdefault(repo, Repo())
            current = {} if replace or not r.commits else dict(r.head[1])
            current.update(files)
            h = hashlib.sha1(repo.encode())
            for name in sorted(current):
                h.update(name.encode() + hashlib.sha256(current[name]).digest())
            h.update(str(len(r.commits)).encode())
            sha = h.hexdigest()
            r.commits.append((sha, current))
            return sha

    def reset_counters(self) -> None:
        with self._lock:
            self.served.clear()
            self.gets.clear()
            self.heads.clear()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeHub:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(self.app())
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-hub", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake hub did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get("/api/models/{user}/{repo}", self.model_info)
        app.router.add_get("/api/models/{user}/{repo}/revision/{rev}", self.model_info)
        app.router.add_route("HEAD", "/{user}/{repo}/resolve/{rev}/{path:.+}", self.resolve)
        app.router.add_get("/{user}/{repo}/resolve/{rev}/{path:.+}", self.resolve, allow_head=False)
        app.router.add_post("/api/repos/create", self.create_repo)
        app.router.add_post("/api/validate-yaml", self.validate_yaml)
        app.router.add_post("/api/models/{user}/{repo}/preupload/{rev}", self.preupload)
        app.router.add_post("/api/models/{user}/{repo}/commit/{rev}", self.commit_endpoint)
        return app

    # -- handlers ------------------------------------------------------------------------------

    def _find(self, request: web.Request) -> tuple[str, str, dict[str, bytes]]:
        repo_id = f"{request.match_info['user']}/{request.match_info['repo']}"
        repo = self.repos.get(repo_id)
        if repo is None or not repo.commits:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"}, text="Repository not found")
        hit = repo.at(request.match_info.get("rev", "main"))
        if hit is None:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RevisionNotFound"}, text="Invalid rev id")
        return repo_id, hit[0], hit[1]

    async def model_info(self, request: web.Request) -> web.Response:
        repo_id, sha, files = self._find(request)
        return web.json_response(
            {
                "id": repo_id,
                "sha": sha,
                "private": False,
                "siblings": [{"rfilename": f} for f in sorted(files)],
            }
        )

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        repo_id, sha, files = self._find(request)
        self.auth.add(request.headers.get("Authorization", ""))
        path = request.match_info["path"]
        if path not in files:
            raise web.HTTPNotFound(
                headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}, text="Entry not found"
            )
        data = files[path]
        lfs = path.endswith(".gguf")
        etag = (
            hashlib.sha256(data).hexdigest()
            if lfs
            else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        )
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        if request.method == "HEAD":
            self.heads.append(path)
            headers["Content-Length"] = str(len(data))
            return web.Response(status=200, headers=headers)
        rng = request.headers.get("Range")
        self.gets.append((path, rng))
        if path in self.fail_gets:
            raise web.HTTPServiceUnavailable(text="try later")
        start, end = 0, len(data) - 1
        status = 200
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start, end, status = int(a), int(b) if b else len(data) - 1, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = self.corrupt.get(path, data)[start : end + 1]
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        cut = self.cut_after.pop(path, None)
        sent = 0
        while sent < len(body):
            n = min(CHUNK, len(body) - sent, (cut - sent) if cut is not None else CHUNK)
            await resp.write(body[sent : sent + n])
            sent += n
            with self._lock:
                self.served[path] += n
            if cut is not None and sent >= cut:
                if self.fail_after_cut:
                    self.fail_gets.add(path)
                await asyncio.sleep(0.05)  # let the bytes reach the client, then drop the connection
                assert request.transport is not None
                request.transport.abort()
                return resp
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        return resp

    async def create_repo(self, request: web.Request) -> web.Response:
        body = await request.json()
        repo_id = f"{body.get('organization')}/{body['name']}"
        if repo_id in self.repos:
            return web.json_response(
                {
                    "error": "You already created this model repo",  # the Hub adds the url
                    "url": f"{self.url}/{repo_id}",
                },
                status=409,
            )
        self.repos[repo_id] = Repo()
        self.commit(repo_id, {".gitattributes": b"*.gguf filter=lfs diff=lfs merge=lfs -text\n"})
        return web.json_response({"url": f"{self.url}/{repo_id}", "name": repo_id})

    async def validate_yaml(self, request: web.Request) -> web.Response:
        return web.json_response({"errors": [], "warnings": []})

    async def preupload(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                    for f in body["files"]
                ]
            }
        )

    async def commit_endpoint(self, request: web.Request) -> web.Response:
        repo_id = f"{request.match_info['user']}/{request.match_info['repo']}"
        if repo_id not in self.repos:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"}, text="Repository not found")
        lines = [json.loads(x) for x in (await request.read()).splitlines() if x.strip()]
        self.commits_received.append(lines)
        files: dict[str, bytes] = {}
        for line in lines:
            if line["key"] == "file":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] not in ("header", "deletedFile"):
                return web.json_response({"error": f"unsupported {line['key']}"}, status=400)
        sha = self.commit(repo_id, files)
        return web.json_response(
            {"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo_id}/commit/{sha}"}
        )
