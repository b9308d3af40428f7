"""Real llama.cpp RPC servers for tests: `nanocommander rpc-server` subprocesses on loopback."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time

import pytest
from helpers import free_port

from nanocommander.engine.llama.rpc.devices import Silent, hello
from nanocommander.engine.llama.rpc.lib import rpc_available
from nanocommander.engine.request.endpoints import Endpoint

needs_rpc = pytest.mark.skipif(
    not rpc_available(),
    reason='llama-cpp-python was built without the RPC backend (CMAKE_ARGS="-DGGML_RPC=ON", see .ci/run)',
)


class RpcServer:
    """One `nanocommander rpc-server` process; `kill()` is the machine going away."""

    def __init__(self, port: int | None = None, *extra: str):
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # not a pipe: nobody reads it while the server runs
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nanocommander",
                "rpc-server",
                "--port",
                str(self.port),
                "--threads",
                "1",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                hello(Endpoint("127.0.0.1", self.port), connect_timeout=1, answer_timeout=2)
                return
            except (OSError, Silent):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    self.log.seek(0)
                    raise RuntimeError(
                        f"rpc-server on {self.address} did not start: {self.log.read()!r}"
                    ) from None
                time.sleep(0.1)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
