"""The server's side of a runner: the process, its connection, and a Composite-shaped proxy per view.

One reader thread per runner takes every message as it comes (a chunk goes to its stream's
queue, an answer to its caller's future), so the runner never blocks on a slow client: flow
control is the credit the consumer gives back (wire.py). The same thread is the watchdog: a
runner with streams in flight that makes no progress (no chunk, and no scheduler round in its
heartbeats) for `timeout` seconds is killed. Either way a runner that is gone ends every stream
and call it had with RunnerLost naming the model, and its exit status and the last lines it wrote
go to the server log.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from nanocommander.engine.llama import log as llamalog
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import Chunk, GenerateRequest
from nanocommander.engine.runtime.runner import wire
from nanocommander.errors import RpcServerLost, RunnerLost

DEFAULT_TIMEOUT = 120.0  # s without progress while decoding before a runner counts as hung
TAIL_LINES = 20
RPC_LOST = "lost the connection to RPC server"  # engine/llama/rpc/devices.py prints it, then exits
STOP_WAIT = 10.0  # s a stopping runner gets to close its models before it is killed

log = logging.getLogger("nanocommander.runner")
GONE = (OSError, RunnerLost, RpcServerLost)  # what sending to, or asking, a dead runner raises


def hang_timeout() -> float:
    try:
        return float(os.environ.get("NANOCOMMANDER_RUNNER_TIMEOUT", "") or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT


class Runner:
    """One runner process, seen from the server (blocking methods: call them off the event loop)."""

    def __init__(self, label: str, *, timeout: float | None = None):
        self.label, self.timeout = label, timeout or hang_timeout()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.names: dict[int, str] = {}  # view id -> the model name its errors use
        self.family = RemoteFamily(self)
        self.lost: str | None = None  # why it is gone (None while it serves)
        self.error: type[RunnerLost] | type[RpcServerLost] = RunnerLost  # what its requests end with
        self.exit_code: int | None = None
        self._ids = itertools.count(1)
        self._calls: dict[int, Future] = {}
        self._streams: dict[int, tuple[int, Callable[[Any], None]]] = {}  # rid -> (view id, put)
        # rid -> chunks received (the reader's count) and credited back (the consumer's): each has one writer
        self._got: dict[int, int] = {}
        self._given: dict[int, int] = {}
        self._send_lock = threading.Lock()
        self._progress, self._rounds = time.monotonic(), -1
        self._stopping = self._hung = False

    def start(self) -> Runner:
        mine, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "nanocommander.engine.runtime.runner", str(theirs.fileno())]
        self.verbose = llamalog.verbose()
        env = {**os.environ, **({"NANOCOMMANDER_DEBUG": "1"} if self.verbose else {})}
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches the server only; it stops the runners
        )
        theirs.close()
        self.conn = Connection(mine.detach())
        self.pid, self.started_at = self.proc.pid, time.time()
        self._output = threading.Thread(target=self._read_output, daemon=True, name=f"runner-{self.pid}-out")
        self._output.start()
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"runner-{self.pid}")
        self._reader.start()
        return self

    # -- requests ---------------------------------------------------------------------------

    def send(self, msg: tuple) -> None:
        if self.lost is not None:
            raise self.error(self._message(self.label))
        with self._send_lock:
            self.conn.send(msg)

    def call(self, kind: str, *parts: Any) -> Any:
        """Send one OPEN, CALL or CLOSE and wait for its answer."""
        rid = next(self._ids)
        fut: Future = Future()
        self._calls[rid] = fut
        try:
            self.send((kind, rid, *parts))
        except GONE:
            self._calls.pop(rid, None)
            raise self.error(self._message(self.label)) from None
        if self.lost is not None and not fut.done():  # it died between the check and the send
            fut.set_exception(self.error(self._message(self.label)))
        return fut.result()

    def open(self, vid: int, name: str, recipe: Recipe, options: dict[str, Any]) -> dict[str, Any]:
        self.names[vid] = name
        return self.call(wire.OPEN, vid, recipe, options)

    def _begin(self, vid: int, req: GenerateRequest, put: Callable[[Any], None]) -> int:
        rid = next(self._ids)
        if not self._streams:
            self._progress = time.monotonic()  # idle time before a stream is no hang
        self._streams[rid] = (vid, put)
        try:
            self.send((wire.GEN, rid, vid, req))
        except GONE:
            self._streams.pop(rid, None)
            raise self.error(self._message(self.names.get(vid, self.label))) from None
        return rid

    def _end(self, rid: int, finished: bool) -> None:
        self._streams.pop(rid, None)
        self._got.pop(rid, None)
        self._given.pop(rid, None)
        if not finished and self.lost is None:
            try:
                self.send((wire.CANCEL, rid))
            except GONE:
                pass

    def _credit(self, rid: int, n: int) -> None:
        self._given[rid] = self._given.get(rid, 0) + n
        self._progress = time.monotonic()  # a stream that waited for its consumer may run again
        try:
            self.send((wire.CREDIT, rid, n))
        except GONE:
            pass  # the stream's reader hears why next

    async def stream(self, vid: int, req: GenerateRequest) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        rid = self._begin(vid, req, lambda item: loop.call_soon_threadsafe(inbox.put_nowait, item))
        finished, taken = False, 0
        try:
            while True:
                chunk = _chunk(await inbox.get())
                finished = chunk.done
                yield chunk
                if finished:
                    return
                taken += 1
                if taken == wire.CREDIT_EVERY:
                    self._credit(rid, taken)
                    taken = 0
        except BaseException:
            finished = finished or self.lost is not None
            raise
        finally:
            self._end(rid, finished)

    def generate(
        self, vid: int, req: GenerateRequest, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        """`stream` for blocking callers (the CLI, benchmarks)."""
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        rid = self._begin(vid, req, inbox.put)
        finished, taken = False, 0
        try:
            while not (cancel is not None and cancel.is_set()):
                chunk = _chunk(inbox.get())
                finished = chunk.done
                yield chunk
                if finished:
                    return
                taken += 1
                if taken == wire.CREDIT_EVERY:
                    self._credit(rid, taken)
                    taken = 0
        finally:
            self._end(rid, finished or self.lost is not None)

    # -- the process ------------------------------------------------------------------------

    def rss(self) -> int | None:
        """Resident memory of the runner in bytes (from /proc), None where it cannot be read."""
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Ask the runner to close its models and exit; kill it if it takes longer than STOP_WAIT."""
        self._stopping = True
        if self.lost is None:
            try:
                with self._send_lock:
                    self.conn.send((wire.STOP,))
            except OSError:
                pass
        try:
            self.proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            log.warning(
                "runner %d (%s) did not stop within %.0f s; killing it", self.pid, self.label, STOP_WAIT
            )
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            self.tail.append(line)
            if self.verbose:  # --verbose / NANOCOMMANDER_DEBUG: llama.cpp's log, as in one process
                sys.stderr.write(f"runner {self.pid}: {line}\n")

    def _read(self) -> None:
        while True:
            try:
                if not self.conn.poll(1.0):
                    self._watch()
                    continue
                msg = self.conn.recv()
            except (EOFError, OSError):
                break
            kind, rid = msg[0], msg[1]
            if kind == wire.BEAT:
                if rid != self._rounds:
                    self._rounds, self._progress = rid, time.monotonic()
                self._watch()  # beats without progress: a runner alive but stuck
            elif kind == wire.CHUNK or (kind == wire.ERR and rid in self._streams):
                self._progress = time.monotonic()
                self._got[rid] = self._got.get(rid, 0) + 1
                stream = self._streams.get(rid)
                if stream is not None:  # else: cancelled, and this was already on its way
                    stream[1](msg)
            elif (fut := self._calls.pop(rid, None)) is not None:
                if kind == wire.RET:
                    fut.set_result(msg[2])
                else:
                    fut.set_exception(wire.unpack(msg[2]))
        self._gone()

    def _watch(self) -> None:
        idle = time.monotonic() - self._progress
        # a stream whose client stopped reading waits for credit: that is no hang of the runner
        owed = [self._got.get(r, 0) - self._given.get(r, 0) for r in list(self._streams)]
        decoding = any(n < wire.WINDOW for n in owed)
        if decoding and not self._hung and idle > self.timeout:
            self._hung = True
            log.warning("runner %d (%s) made no progress for %.0f s; killing it", self.pid, self.label, idle)
            self.proc.kill()  # SIGKILL; the reader then reads EOF and ends its streams

    def _gone(self) -> None:
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:  # the socket closed but the process lingers: end it
            self.proc.kill()
            code = self.proc.wait()
        self._output.join(1)
        self.exit_code = code
        if self._hung:
            why = f"stopped answering (no progress for {self.timeout:g} s) and was killed"
        elif code < 0:
            why = f"was killed by {signal.Signals(-code).name}"
        else:
            why = f"exited with code {code}"
        self.lost = f"its runner (pid {self.pid}) {why}"
        rpc = next((line for line in self.tail if RPC_LOST in line), None)
        if rpc is not None:  # the engine's abort handler named the lost RPC server (503, as in-process)
            self.error, self.lost = RpcServerLost, rpc.split(": ", 1)[-1] + f"; {self.lost}"
        if not self._stopping or code != 0:
            log.warning(
                "runner %d (%s) %s; its last output:\n%s",
                self.pid,
                self.label,
                why,
                "\n".join(self.tail) or "-",
            )
        for rid, fut in list(self._calls.items()):
            self._calls.pop(rid, None)
            fut.set_exception(self.error(self._message(self.label)))
        for _, (vid, put) in list(self._streams.items()):
            put(self.error(self._message(self.names.get(vid, self.label))))

    def _message(self, name: str) -> str:
        why = self.lost or "its runner is stopping"
        return f"model '{name}' stopped: {why}; it is loaded again on its next request"


def _chunk(item: Any) -> Chunk:
    """A stream's item as a chunk, or its error raised."""
    if isinstance(item, BaseException):
        raise item
    if item[0] == wire.ERR:
        raise wire.unpack(item[2])
    return item[2]


@dataclass(frozen=True)
class RemoteVocab:
    n_vocab: int


@dataclass(frozen=True)
class RemoteTemplate:
    source: str | None


class RemoteScheduler:
    """What /api/ps (and a test) asks a composite's scheduler: the slots in use, the requests waiting."""

    def __init__(self, comp: RemoteComposite):
        self.comp = comp

    def active(self) -> list[int]:
        try:
            return list(range(self.comp.runner.call(wire.CALL, self.comp.vid, "active", (), {})))
        except GONE:
            return []

    def waiting(self) -> int:
        try:
            return int(self.comp.runner.call(wire.CALL, self.comp.vid, "waiting", (), {}))
        except GONE:
            return 0


class RemoteFamily:
    """An adapter family in a runner: one per runner, so its views group together in /api/ps."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def info(self, names: dict[Any, str] | None = None) -> dict[str, Any]:
        by_vid = {c.vid: n for c, n in (names or {}).items()}
        return self.runner.call(wire.CALL, next(iter(by_vid), None), "family_info", (by_vid,), {})


class RemoteComposite:
    """A composite loaded in a runner, with the interface the manager and the protocols use."""

    def __init__(self, runner: Runner, vid: int, recipe: Recipe, facts: dict[str, Any]):
        self.runner, self.vid, self.recipe = runner, vid, recipe
        self.n_ctx, self.n_parallel = int(facts["n_ctx"]), int(facts["n_parallel"])
        self.vocab, self.template = RemoteVocab(int(facts["n_vocab"])), RemoteTemplate(facts["template"])
        self.load_s = float(facts["load_s"])
        self.family = runner.family if facts["family"] else None
        self.scheduler = RemoteScheduler(self)
        self.closed = False

    @property
    def lost(self) -> bool:
        return self.runner.lost is not None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.runner.call(wire.CALL, self.vid, method, args, kwargs)

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self._call("tokenize", text, add_bos, special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._call("detokenize", [int(i) for i in ids])

    def chat_tokens(self, messages: Sequence[dict[str, Any]], **options: Any) -> tuple[str, list[int]]:
        return self._call("chat_tokens", list(messages), **options)

    def chat_prompt(self, messages: Sequence[dict[str, Any]], **options: Any) -> str:
        return self.chat_tokens(messages, **options)[0]

    def info(self) -> dict[str, Any]:
        return self._call("info")

    def embed(self, texts: Sequence[str], *, truncate: bool = True) -> Any:
        """The view's embedder (made in the runner on first use): raw vectors and the token count."""
        return self._call("embed", list(texts), truncate=truncate)

    def score(self, token_ids: Sequence[int], start: int, **kwargs: Any) -> Any:
        return self._call("score", list(token_ids), start, **kwargs)

    def stream(self, req: GenerateRequest) -> AsyncIterator[Chunk]:
        return self.runner.stream(self.vid, req)

    def generate(self, req: GenerateRequest, cancel: threading.Event | None = None) -> Iterator[Chunk]:
        return self.runner.generate(self.vid, req, cancel)
