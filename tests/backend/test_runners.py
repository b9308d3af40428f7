"""Runner processes (engine/runtime/runner): a model that dies costs that model only.

`kill -9` of a runner mid-stream, an abort() inside it (the test-only fault hook) and a runner
that hangs each end that model's streams with the protocol's error object naming it within 2 s
(the hang: within its timeout), while a second model keeps streaming; the next request loads the
model again in a fresh runner. No runner outlives its server, on SIGTERM or on SIGKILL.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import httpx
import pytest
from helpers import free_port, recipe_yaml

from nanocommander.backend.app import MANAGER
from nanocommander.engine.runtime.runner import wire

NO_EOS = {"268": -1000, "270": -1000}  # ban the tiny models' end tokens: generate until num_predict
LONG = {"num_predict": 1500, "temperature": 0, "logit_bias": NO_EOS}
SHORT = {"num_predict": 8, "temperature": 0, "logit_bias": NO_EOS}


@pytest.fixture(scope="module")
def live(start_server, recipe_of):
    mp = pytest.MonkeyPatch()
    mp.setenv(wire.FAULTS_ENV, "1")  # runners inherit it: the abort and hang prompts work
    mp.setenv("NANOCOMMANDER_RUNNER_TIMEOUT", "3")
    server = start_server([recipe_of("one"), recipe_of("two")], keep_alive=300, runners=True)
    yield server
    mp.undo()


def pids(live) -> dict[str, int]:
    return {m["name"]: m["runner_pid"] for m in httpx.get(f"{live.url}/api/ps").json()["models"]}


def short(live, model: str) -> str:
    body = {"model": model, "prompt": "hello", "stream": False, "options": SHORT}
    r = httpx.post(f"{live.url}/api/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["response"]


class Stream:
    """A long /api/generate stream read on a thread: its lines, and when the last one came."""

    def __init__(self, live, model: str, prompt: str = "hello"):
        self.lines: list[dict] = []
        self.times: list[float] = []
        self.started, self.ended = threading.Event(), threading.Event()
        self.ended_at = 0.0
        body = {"model": model, "prompt": prompt, "raw": True, "options": LONG}
        self.thread = threading.Thread(target=self._read, args=(live.url, body), daemon=True)
        self.thread.start()

    def _read(self, url: str, body: dict) -> None:
        with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=60) as r:
            for line in r.iter_lines():
                self.lines.append(json.loads(line))
                self.times.append(time.monotonic())
                if len(self.lines) >= 5:
                    self.started.set()
        self.ended_at = time.monotonic()
        self.ended.set()


def assert_ends_with_error_naming(stream: Stream, model: str, since: float, within: float) -> str:
    assert stream.ended.wait(within + 5)
    last = stream.lines[-1]
    assert "error" in last and f"model '{model}'" in last["error"], last
    assert stream.ended_at - since < within
    return last["error"]


def test_kill_9_mid_stream_ends_that_stream_and_nothing_else(live):
    short(live, "one")
    short(live, "two")
    before = pids(live)
    assert before["one:latest"] != before["two:latest"] != os.getpid()
    one, two = Stream(live, "one"), Stream(live, "two")
    assert one.started.wait(30) and two.started.wait(30)
    killed = time.monotonic()
    os.kill(before["one:latest"], signal.SIGKILL)
    message = assert_ends_with_error_naming(one, "one:latest", killed, within=2)
    assert "SIGKILL" in message
    assert short(live, "one")  # the next request loads it again, in a new runner
    assert pids(live)["one:latest"] not in (None, before["one:latest"])
    assert_streamed_through(two, killed)


def assert_streamed_through(stream: Stream, since: float) -> None:
    """The other model's stream kept producing after `since` and ended well."""
    assert stream.ended.wait(120) and stream.lines[-1].get("done") and "error" not in stream.lines[-1]
    assert sum(t > since for t in stream.times) > 10


def test_an_abort_inside_the_runner_has_the_same_outcome(live, caplog):
    short(live, "one")
    before = pids(live)
    one, two = Stream(live, "one"), Stream(live, "two")
    assert one.started.wait(30) and two.started.wait(30)
    with caplog.at_level(logging.WARNING, logger="nanocommander.runner"):
        t0 = time.monotonic()
        r = httpx.post(
            f"{live.url}/api/generate",
            json={"model": "one", "prompt": f"x {wire.ABORT_PROMPT}", "raw": True, "stream": False},
            timeout=60,
        )
        assert (
            r.status_code == 500
            and "model 'one:latest'" in r.json()["error"]
            and "SIGABRT" in r.json()["error"]
        )
        assert_ends_with_error_naming(one, "one:latest", t0, within=2.5)  # the abort waits 0.2 s
    assert any(
        "SIGABRT" in rec.getMessage() and str(before["one:latest"]) in rec.getMessage()
        for rec in caplog.records
    )
    assert short(live, "one") and pids(live)["one:latest"] != before["one:latest"]
    assert_streamed_through(two, t0)


def test_a_runner_that_stops_answering_is_killed_and_the_model_reloads(live):
    short(live, "one")
    before = pids(live)["one:latest"]
    t0 = time.monotonic()
    hung = Stream(live, "one", prompt=f"x {wire.HANG_PROMPT}")
    message = assert_ends_with_error_naming(hung, "one:latest", t0, within=3 + 3)
    assert "stopped answering" in message
    assert short(live, "one") and pids(live)["one:latest"] != before


def test_a_client_that_stops_reading_is_no_hang(live):
    """A stream waiting for its consumer's credit is not a stuck runner, however long it waits."""
    short(live, "one")
    before = pids(live)["one:latest"]
    body = {"model": "one", "prompt": "hello", "raw": True, "options": LONG}
    with httpx.stream("POST", f"{live.url}/api/generate", json=body, timeout=60) as r:
        lines = r.iter_lines()
        head = [next(lines) for _ in range(3)]
        time.sleep(5)  # beyond the module's 3 s runner timeout
        rest = list(lines)
    assert json.loads(head[0])["response"] is not None and "error" not in json.loads(rest[-1])
    assert pids(live)["one:latest"] == before


def test_ps_shows_each_runner_and_unload_stops_it(live):
    short(live, "two")
    entry = next(m for m in httpx.get(f"{live.url}/api/ps").json()["models"] if m["name"] == "two:latest")
    pid = entry["runner_pid"]
    assert (
        entry["runner"]["pid"] == pid
        and entry["runner"]["rss"] > 1 << 20
        and entry["runner"]["uptime_s"] >= 0
    )
    httpx.post(f"{live.url}/api/generate", json={"model": "two", "keep_alive": 0})
    assert "two:latest" not in pids(live)
    assert wait_gone(pid, 10)
    assert live.app[MANAGER].fleet is not None


# -- no runner outlives its server -------------------------------------------------------------


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie waiting for whoever adopted it to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.1)
    return gone(pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_runner_survives_the_server(tiny, tmp_path, sig):
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(recipe_yaml(tiny, name))
    url = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ, NANOCOMMANDER_MODELS=str(tmp_path / "store"), NANOCOMMANDER_RUNNERS="1")
    log = tempfile.TemporaryFile()
    cmd = [sys.executable, "-m", "nanocommander", "serve", "one.yaml", "two.yaml", "--host", url[7:]]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/api/version", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        for name in ("one", "two"):
            body = {"model": name, "prompt": "hi", "stream": False, "options": SHORT}
            assert httpx.post(f"{url}/api/generate", json=body, timeout=60).status_code == 200
        runners = [m["runner_pid"] for m in httpx.get(f"{url}/api/ps").json()["models"]]
        assert len(set(runners)) == 2 and proc.pid not in runners
        proc.send_signal(sig)
        proc.wait(30)
        if sig == signal.SIGTERM:
            assert proc.returncode == 0
        assert all(wait_gone(pid, 10) for pid in runners), runners
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
