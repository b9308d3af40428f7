"""Real front-end checks (not CI: the installs are large): Open WebUI and SillyTavern against `nanocommander serve`.

    python bench/frontends.py RECIPE [--scratch DIR] [--only webui|sillytavern] [--no-screenshots]

Installs into a scratch folder (default ./.frontends): Open WebUI from PyPI in its own venv,
SillyTavern from the npm registry (the `sillytavern` package). Starts `nanocommander serve RECIPE`
on a free port and each front end pointed at it, and drives them, one PASS/FAIL line per flow:

* Open WebUI (pinned, WEBUI_VERSION, default 0.12.4): sign up the admin, model list, a streamed and
  a non-streamed chat completion through its proxy, title generation, an admin sk- key, the two
  functions installed (`nanocommander plugins install open-webui --global`) with the right kinds,
  the Filter's user alpha set; then headless Chromium (bench/webui_browser.py, selenium) picks the
  model, chats and clicks the compare button until the three-column table is drawn.
* SillyTavern: its backend's status/model call for KoboldCpp and for Ollama, a streamed and a
  non-streamed generation through its proxy, abort, token count, the extension's files served.

Screenshots go to bench/screenshots/. Every request goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "bench" / "screenshots"
WEBUI_VERSION = os.environ.get("WEBUI_VERSION", "0.12.4")  # the release the functions were proven on
results: list[tuple[str, bool, str, float]] = []  # (step, passed, detail, seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, headers=None, timeout=300, raw=False):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        payload = r.read()
        return payload if raw else json.loads(payload or b"null")


def wait_http(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        with contextlib.suppress(OSError, urllib.error.URLError):
            urllib.request.urlopen(url, timeout=5)
            return
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f}s")


def check(name: str, fn: Callable[[], object]) -> bool:
    start = time.monotonic()
    try:
        detail, ok = str(fn() or "")[:160], True
    except Exception as exc:  # a failed flow is a result, not a crash
        detail, ok = f"{type(exc).__name__}: {exc}"[:300], False
    results.append((name, ok, detail, time.monotonic() - start))
    print(f"{'PASS' if ok else 'FAIL'}  {name}  ({results[-1][3]:.1f} s)  {detail}", flush=True)
    return ok


@contextlib.contextmanager
def process(args: list[str], *, env=None, cwd=None, log: Path) -> Iterator[subprocess.Popen]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def screenshot(url: str, name: str) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise RuntimeError("no chromium (apt-get install chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    out = SHOTS / f"{name}.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1024,700",
            "--virtual-time-budget=60000",
            f"--screenshot={out}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return str(out.relative_to(ROOT))


# -- Open WebUI --------------------------------------------------------------------------------


def install_webui(scratch: Path) -> Path:
    venv = scratch / "venv"
    if not (venv / "bin" / "open-webui").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q", f"open-webui=={WEBUI_VERSION}"]
        subprocess.run(pip, check=True)
    return venv / "bin" / "open-webui"


def run_webui(scratch: Path, nc_url: str, model: str, shots: bool) -> None:
    exe = install_webui(scratch)
    port = free_port()
    shutil.rmtree(scratch / "webui-data", ignore_errors=True)  # it keeps the last run's connection URL
    env = {
        **os.environ,
        "DATA_DIR": str(scratch / "webui-data"),
        "OLLAMA_BASE_URL": nc_url,
        "OPENAI_API_BASE_URL": f"{nc_url}/v1",
        "OPENAI_API_KEY": "unused",
        "WEBUI_SECRET_KEY": "bench",
        "ENABLE_SIGNUP": "true",
        "WEBUI_AUTH": "true",
        "ENABLE_API_KEYS": "true",  # else `plugins install --token sk-...` is refused (403)
        "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1",
        "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false",
    }
    base = f"http://127.0.0.1:{port}"
    with process(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        log=scratch / "logs" / "webui.log",
    ):
        wait_http(f"{base}/health", 600)
        auth: dict[str, str] = {}

        def signup():
            body = {"name": "bench", "email": "bench@example.com", "password": "bench-pass"}
            try:
                token = http("POST", f"{base}/api/v1/auths/signup", body)["token"]
            except urllib.error.HTTPError:
                token = http("POST", f"{base}/api/v1/auths/signin", body)["token"]
            auth["Authorization"] = f"Bearer {token}"
            return "admin signed in"

        check("webui: sign up the admin", signup)
        check(
            "webui: model list has the composite",
            lambda: _has_model(http("GET", f"{base}/api/models", headers=auth), model),
        )
        chat = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
        check(
            "webui: non-streamed chat",
            lambda: http("POST", f"{base}/api/chat/completions", {**chat, "stream": False}, headers=auth)[
                "choices"
            ][0]["message"]["content"],
        )
        check(
            "webui: streamed chat",
            lambda: _sse_text(
                http("POST", f"{base}/api/chat/completions", {**chat, "stream": True}, headers=auth, raw=True)
            ),
        )
        check(
            "webui: title generation",
            lambda: http(
                "POST",
                f"{base}/api/v1/tasks/title/completions",
                {"model": model, "messages": chat["messages"]},
                headers=auth,
            ),
        )
        jwt = auth.get("Authorization", "").removeprefix("Bearer ")
        key: dict[str, str] = {}
        check(
            "webui: admin API key (sk-...)",
            lambda: (
                key.update(http("POST", f"{base}/api/v1/auths/api_key", {}, headers=auth))
                or key["api_key"][:5]
            ),
        )
        install = [sys.executable, "-m", "nanocommander", "plugins", "install", "open-webui", "--url", base]
        install += ["--token", key.get("api_key") or jwt, "--server-url", nc_url, "--global"]
        check(
            "webui: functions installed (plugins install --token sk-... --global)",
            lambda: subprocess.run(install, check=True, capture_output=True, text=True, timeout=120).stdout,
        )
        check("webui: kinds are filter + action", lambda: _kinds(base, auth))
        check("webui: user alpha valve set on the Filter", lambda: _set_alpha(base, auth, 0.5))
        check(
            "webui: compare num_predict 40 (valves merged)", lambda: _merge_valves(base, auth, num_predict=40)
        )
        check("webui: version", lambda: http("GET", f"{base}/api/version")["version"])
        from webui_browser import drive  # bench/ is the script's folder

        drive(check, base, jwt, model, 0.5, SHOTS if shots else None)


def _has_model(listing, model: str) -> str:
    ids = [m.get("id") for m in (listing.get("data") if isinstance(listing, dict) else listing) or []]
    if not any(i and i.split(":")[0] == model.split(":")[0] for i in ids):
        raise AssertionError(f"{model} not in {ids}")
    return ", ".join(map(str, ids))


def _sse_text(raw: bytes) -> str:
    text = ""
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for c in json.loads(line[6:]).get("choices", []):
                text += (c.get("delta") or {}).get("content") or ""
    if not text:
        raise AssertionError("no streamed text")
    return text


def _kinds(base: str, auth: dict[str, str]) -> str:
    kinds = {f["id"]: f["type"] for f in http("GET", f"{base}/api/v1/functions/", headers=auth)}
    if kinds.get("nanocommander") != "filter" or kinds.get("nanocommander_compare") != "action":
        raise AssertionError(kinds)
    return json.dumps(kinds)


def _merge_valves(base: str, auth: dict[str, str], **changes: object) -> str:
    url = f"{base}/api/v1/functions/id/nanocommander_compare/valves"
    merged = {**(http("GET", url, headers=auth) or {}), **changes}
    http("POST", f"{url}/update", merged, headers=auth)
    return json.dumps(http("GET", url, headers=auth))


def _set_alpha(base: str, auth: dict[str, str], alpha: float) -> str:
    url = f"{base}/api/v1/functions/id/nanocommander/valves/user"
    http("POST", f"{url}/update", {"alpha": alpha}, headers=auth)
    return json.dumps(http("GET", url, headers=auth))


# -- SillyTavern ------------------------------------------------------------------------------


def install_sillytavern(scratch: Path) -> Path:
    home = scratch / "sillytavern"
    server = home / "node_modules" / "sillytavern" / "server.js"
    if not server.exists():
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "sillytavern"], cwd=home, check=True)
    return server


def run_sillytavern(scratch: Path, nc_url: str, kobold_url: str, model: str, shots: bool) -> None:
    server = install_sillytavern(scratch)
    ext = (
        scratch / "st-data" / "default-user" / "extensions" / "nanocommander"
    )  # a user's third-party extension
    if not ext.exists():
        shutil.copytree(ROOT / "plugins" / "sillytavern", ext)
    port = free_port()
    args = [
        "node",
        str(server),
        "--port",
        str(port),
        "--listen",
        "false",
        "--whitelist",
        "false",
        "--browserLaunchEnabled",
        "false",
        "--dataRoot",
        str(scratch / "st-data"),
    ]
    base = f"http://127.0.0.1:{port}"
    with process(args, cwd=server.parent, log=scratch / "logs" / "sillytavern.log"):
        wait_http(base, 300)
        headers = _st_session(base)
        kobold = {"api_server": f"{kobold_url}/api", "main_api": "kobold"}
        check(
            "st: KoboldCpp status",
            lambda: http("POST", f"{base}/api/backends/kobold/status", kobold, headers),
        )
        check(
            "st: Ollama model list",
            lambda: http(
                "POST",
                f"{base}/api/backends/text-completions/status",
                {"api_server": nc_url, "api_type": "ollama"},
                headers,
            ),
        )
        gen = {
            **kobold,
            "prompt": "Once upon a time",
            "max_length": 16,
            "max_context_length": 1024,
            "temperature": 0.7,
            "can_abort": True,
        }
        check(
            "st: non-streamed generation",
            lambda: http(
                "POST", f"{base}/api/backends/kobold/generate", {**gen, "streaming": False}, headers
            ),
        )
        check(
            "st: streamed generation",
            lambda: http(
                "POST", f"{base}/api/backends/kobold/generate", {**gen, "streaming": True}, headers, raw=True
            )[:80],
        )
        check("st: abort", lambda: http("POST", f"{kobold_url}/api/extra/abort", {}))
        check(
            "st: token count",
            lambda: http("POST", f"{kobold_url}/api/extra/tokencount", {"prompt": "hello world"}),
        )
        check(
            "st: extension files served",
            lambda: len(
                http(
                    "GET",
                    f"{base}/scripts/extensions/third-party/nanocommander/manifest.json",
                    headers=headers,
                    raw=True,
                )
            ),
        )
        if shots:
            check("st: screenshot", lambda: screenshot(base, "sillytavern"))


def _st_session(base: str) -> dict[str, str]:
    """SillyTavern's API wants its CSRF token and the session cookie that came with it."""
    req = urllib.request.Request(f"{base}/csrf-token")
    with urllib.request.urlopen(req, timeout=30) as r:
        cookie = "; ".join(c.split(";", 1)[0] for c in r.headers.get_all("Set-Cookie") or [])
        token = json.loads(r.read())["token"]
    return {"X-CSRF-Token": token, "Cookie": cookie}


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--scratch", default=str(ROOT / ".frontends"))
    ap.add_argument("--only", choices=("webui", "sillytavern"))
    ap.add_argument("--no-screenshots", action="store_true")
    args = ap.parse_args()
    scratch = Path(args.scratch).resolve()
    port, kport = free_port(), free_port()
    nc_url, kobold_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{kport}"
    env = {**os.environ, "NANOCOMMANDER_HOST": f"127.0.0.1:{port}", "NANOCOMMANDER_ORIGINS": "*"}
    cmd = [sys.executable, "-m", "nanocommander", "serve", args.recipe, "--kobold-port", str(kport)]
    with process(cmd, env=env, log=scratch / "logs" / "nanocommander.log"):
        wait_http(f"{nc_url}/api/version", 120)
        model = http("GET", f"{nc_url}/api/tags")["models"][0]["name"]
        http(
            "POST", f"{nc_url}/api/generate", {"model": model}
        )  # load it once, before the front ends time out
        if args.only in (None, "webui"):
            check(
                "webui: install and run", lambda: run_webui(scratch, nc_url, model, not args.no_screenshots)
            )
        if args.only in (None, "sillytavern"):
            check(
                "st: install and run",
                lambda: run_sillytavern(scratch, nc_url, kobold_url, model, not args.no_screenshots),
            )
    passed = sum(r[1] for r in results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
