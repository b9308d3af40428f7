"""`nanocommander serve` with a large member on a real rpc-server that dies: the request fails in its
protocol's shape, other models keep answering, the next request reloads or says why it cannot.

The server runs as a subprocess: ggml-rpc reacts to a lost connection with abort(), and the
server's way around that (engine/llama/rpc/devices.py) parks a thread for good, which is no place for pytest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import ollama
import pytest
from rpc_servers import RpcServer, free_port, needs_rpc

pytestmark = [needs_rpc, pytest.mark.slow]
NO_EOS = {"268": -1000, "270": -1000}  # ban the tiny models' end tokens: generate until num_predict
LONG = {"num_predict": 1500, "temperature": 0, "logit_bias": NO_EOS}
SHORT = {"num_predict": 8, "temperature": 0, "logit_bias": NO_EOS}


class Serve:
    """`nanocommander serve` over a recipe whose large member is on `rpc`, and an all-local one."""

    def __init__(self, tiny, tmp_path, rpc: str):
        members = f"  base: {{path: {tiny['base']}}}\n  tuned: {{path: {tiny['tuned']}}}\n"
        (tmp_path / "remote.yaml").write_text(
            f"name: remote\nmembers:\n  large: {{path: {tiny['large']}, rpc: [{rpc}]}}\n{members}"
            "parameters: {num_ctx: 2048}\n"
        )
        (tmp_path / "local.yaml").write_text(
            f"name: local\nmembers:\n  large: {{path: {tiny['large']}}}\n{members}"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        env = dict(os.environ, NANOCOMMANDER_MODELS=str(tmp_path / "store"))
        env.pop("NANOCOMMANDER_RPC", None)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nanocommander",
                "serve",
                "remote.yaml",
                "local.yaml",
                "--host",
                self.url[7:],
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/api/version", timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, self.stop()
                time.sleep(0.2)
        self.client = ollama.Client(host=self.url, timeout=60)

    def text(self, model: str) -> str:
        return self.client.generate(model=model, prompt="hello", options=SHORT)["response"]

    def error(self, model: str) -> ollama.ResponseError:
        with pytest.raises(ollama.ResponseError) as info:
            self.client.generate(model=model, prompt="hello", options=SHORT)
        return info.value

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@pytest.fixture
def setup(tiny, tmp_path):
    rpc = RpcServer()
    serve = Serve(tiny, tmp_path, rpc.address)
    yield rpc, serve
    serve.stop()
    rpc.kill()


def test_killing_the_rpc_server_mid_stream_ends_that_stream_and_nothing_else(setup):
    rpc, serve = setup
    before = serve.text("remote")
    local = serve.text("local")
    n, killed_at = 0, 0.0
    with pytest.raises(ollama.ResponseError) as info:
        for _ in serve.client.generate(model="remote", prompt="hello", stream=True, options=LONG):
            n += 1
            if n == 20:
                rpc.kill()
                killed_at = time.monotonic()
    assert f"lost the connection to RPC server {rpc.address}" in str(info.value)
    assert 20 <= n < 1500 and time.monotonic() - killed_at < 10

    assert serve.text("local") == local  # the server keeps answering other models
    t0 = time.monotonic()
    down = serve.error("remote")  # the next request reloads, and says why it cannot
    assert f"cannot reach RPC server {rpc.address}" in str(down) and time.monotonic() - t0 < 5

    again = RpcServer(rpc.port)
    try:
        assert serve.text("remote") == before  # reloaded over a fresh connection, same output
        assert serve.text("local") == local
    finally:
        again.kill()

    serve.proc.send_signal(signal.SIGINT)  # parked llama.cpp threads do not keep the process alive
    assert serve.proc.wait(15) == 0


def test_a_server_lost_while_idle_fails_the_next_request_in_each_protocols_shape(setup, tiny):
    rpc, serve = setup
    before = serve.text("remote")
    rpc.kill()  # nothing notices until the model is used
    lost = serve.error("remote")
    assert lost.status_code == 503 and f"lost the connection to RPC server {rpc.address}" in lost.error

    again = RpcServer(rpc.port)
    try:
        assert serve.text("remote") == before
        body = {"model": "remote", "stream": True, "max_tokens": 1500, "temperature": 0, "logit_bias": NO_EOS}
        body["messages"] = [{"role": "user", "content": "hello"}]
        request = urllib.request.Request(
            serve.url + "/v1/chat/completions",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        events = []
        with urllib.request.urlopen(request, timeout=60) as response:
            for line in response:
                if line.startswith(b"data: {"):
                    events.append(json.loads(line[6:]))
                    if len(events) == 10:
                        again.kill()
    finally:
        again.kill()
    assert "choices" in events[0]
    assert f"lost the connection to RPC server {rpc.address}" in events[-1]["error"]["message"]
