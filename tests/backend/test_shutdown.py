"""SIGTERM on a real `nanocommander serve`: open streams end with their protocol's error object,
an upload in flight leaves no temp file, and the process exits within a few seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import tiny_models
from helpers import free_port

NO_EOS = {str(tiny_models.EOS): -100, str(tiny_models.IM_END): -100}  # keep the streams going


def _recipe(folder: Path, tiny, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nmembers:\n  large: {{path: {tiny['large']}}}\n  base: {{path: {tiny['base']}}}\n"
        f"  tuned: {{path: {tiny['tuned']}}}\nparameters: {{num_ctx: 2048, temperature: 0}}\n"
    )
    return path


class Reader(threading.Thread):
    """Reads one streamed response line by line; `started` is set at the first body line."""

    def __init__(self, url: str, body: dict):
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.lines: list[str] = []
        self.status = 0
        self.started = threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body, timeout=60) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line:
                        self.lines.append(line)
                        self.started.set()
        except httpx.HTTPError as exc:
            self.lines.append(f"!transport error: {exc!r}")
        finally:
            self.started.set()


def _slow_upload(url: str, out: dict) -> None:
    def body():
        yield b"x" * 1000
        time.sleep(30)  # the server is stopped while this request waits for the rest
        yield b"y"

    try:
        out["status"] = httpx.post(url, content=body(), timeout=60).status_code
    except httpx.HTTPError as exc:
        out["status"] = repr(exc)


@pytest.mark.slow
def test_sigterm_ends_every_stream_with_its_error_object_and_exits_quickly(tmp_path, tiny):
    port, store = free_port(), tmp_path / "store"
    recipes = [str(_recipe(tmp_path, tiny, n)) for n in ("ollama-m", "openai-m", "kobold-m")]
    env = {**os.environ, "NANOCOMMANDER_HOST": f"127.0.0.1:{port}", "NANOCOMMANDER_MODELS": str(store)}
    env.pop("NANOCOMMANDER_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanocommander", "serve", *recipes, "--default-model", "kobold-m"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/version").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
                time.sleep(0.2)
        readers = {
            "ollama": Reader(
                f"{url}/api/generate",
                {"model": "ollama-m", "prompt": "hi", "options": {"num_predict": -1, "logit_bias": NO_EOS}},
            ),
            "openai": Reader(
                f"{url}/v1/chat/completions",
                {
                    "model": "openai-m",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": True,
                    "logit_bias": NO_EOS,
                },
            ),
            "kobold": Reader(
                f"{url}/api/extra/generate/stream",
                {"prompt": "hi", "max_length": 2000, "ban_eos_token": True},
            ),
        }
        for reader in readers.values():
            reader.start()
        for name, reader in readers.items():
            assert reader.started.wait(60), name
            assert reader.status == 200, (name, reader.lines)
        upload: dict = {}
        uploader = threading.Thread(
            target=_slow_upload, args=(f"{url}/api/blobs/sha256:{'ab' * 32}", upload), daemon=True
        )
        uploader.start()
        deadline = time.time() + 10
        while not list((store / "blobs").glob(".upload-*")):  # the upload's temp file exists
            assert time.time() < deadline, "upload never started"
            time.sleep(0.05)

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for reader in readers.values():
        reader.join(10)
    assert proc.returncode == 0, proc.stderr.read()
    assert took < 5, f"exit took {took:.1f} s"

    last = {name: r.lines[-1] for name, r in readers.items()}
    assert all(len(r.lines) >= 2 for r in readers.values()), last  # they were mid-stream
    for name, line in last.items():
        assert "shutting down" in _error_of(name, line), (name, line)
    leftovers = [p.name for p in store.rglob("*") if p.name.startswith((".upload-", ".tmp-"))]
    assert leftovers == [], leftovers


def _error_of(name: str, line: str) -> str:
    """The message of a protocol's error object, as the stream's last line carries it."""
    item = json.loads(line.removeprefix("data: "))
    if name == "ollama":
        assert set(item) == {"error"}
        return item["error"]
    if name == "openai":
        assert set(item["error"]) == {"message", "type", "param", "code"}
        return item["error"]["message"]
    assert set(item) == {"msg"}
    return item["msg"]
