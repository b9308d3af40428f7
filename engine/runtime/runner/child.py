"""The runner's side: load a recipe's Composite (or an adapter family's views) and serve the server.

The main thread only reads messages, so a cancel or a credit is seen at once whatever else runs:
each stream has a thread of its own (iterating `Composite.generate`, which the scheduler batches
with every other request in flight), and loads and calls run on a small pool. When the server
goes away (the socket reads EOF, or the parent PID changes) the runner ends at once with
os._exit: nothing it holds is worth a tidy close, and a runner must never outlive its server.
A lost RPC server is not survived here (no `keep_serving_on_loss`): llama.cpp's abort ends the
runner, which returns the model's memory and threads, and the next request loads it afresh.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.engine.runtime.core import embedder_for
from nanocommander.engine.runtime.family import Family
from nanocommander.engine.runtime.pool import ModelPool
from nanocommander.engine.runtime.runner import wire

BEAT_S = 1.0  # how often a runner with streams in flight says how far its schedulers got

log = logging.getLogger("nanocommander.runner")


class Served:
    """What one runner holds: its pool, its views (one composite, or a family's), their embedders."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.pool = ModelPool()
        self.views: dict[int, Composite] = {}
        self.family: Family | None = None
        self.embedders: dict[int, Any] = {}
        self.streams: dict[int, tuple[threading.Event, threading.Semaphore]] = {}
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # views, family, embedders
        self._calls = ThreadPoolExecutor(max_workers=4, thread_name_prefix="runner-call")
        self.faults = os.environ.get(wire.FAULTS_ENV) == "1"

    def send(self, msg: tuple) -> None:
        with self._send_lock:
            self.conn.send(msg)

    # -- the main loop ----------------------------------------------------------------------

    def run(self) -> None:
        parent = os.getppid()
        threading.Thread(target=self._beat, args=(parent,), daemon=True, name="runner-beat").start()
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):  # the server is gone
                os._exit(0)
            kind = msg[0]
            if kind == wire.GEN:
                cancel, credit = threading.Event(), threading.Semaphore(wire.WINDOW)
                self.streams[msg[1]] = (cancel, credit)
                threading.Thread(target=self._generate, args=msg[1:], daemon=True, name="runner-gen").start()
            elif kind == wire.CANCEL:
                if (stream := self.streams.get(msg[1])) is not None:
                    stream[0].set()
                    stream[1].release(wire.WINDOW)  # a stream waiting for credit sees the cancel
            elif kind == wire.CREDIT:
                if (stream := self.streams.get(msg[1])) is not None:
                    stream[1].release(msg[2])
            elif kind in (wire.OPEN, wire.CALL, wire.CLOSE):
                self._calls.submit(self._answer, msg)
            elif kind == wire.STOP:
                self.stop()
                os._exit(0)

    def _beat(self, parent: int) -> None:
        while True:
            time.sleep(BEAT_S)
            if os.getppid() != parent:  # reparented: the server died without closing the socket
                os._exit(0)
            if self.streams:
                rounds = sum(v.scheduler.rounds for v in list(self.views.values()))
                try:
                    self.send((wire.BEAT, rounds))
                except OSError:
                    os._exit(0)

    def stop(self) -> None:
        """Close every view (running requests end with a cancel chunk) and every embedder."""
        with self._lock:
            views, self.views = list(self.views.values()), {}
            embedders, self.embedders = list(self.embedders.values()), {}
        for obj in [*embedders, *views]:
            try:
                obj.close()
            except Exception:
                log.exception("closing %s", type(obj).__name__)

    # -- calls --------------------------------------------------------------------------------

    def _answer(self, msg: tuple) -> None:
        rid = msg[1]
        try:
            if msg[0] == wire.OPEN:
                value = self._open(*msg[2:])
            elif msg[0] == wire.CLOSE:
                value = self._close(msg[2])
            else:
                value = self._call(*msg[2:])
            reply: tuple = (wire.RET, rid, value)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            reply = (wire.ERR, rid, wire.pack(exc))
        try:
            self.send(reply)
        except OSError:
            os._exit(0)

    def _open(self, vid: int, recipe: Any, options: dict[str, Any]) -> dict[str, Any]:
        n_parallel, max_queue = options.get("n_parallel"), options.get("max_queue")
        capacity = options.get("family")
        with self._lock:
            if capacity is None:
                view = Composite.load(recipe, self.pool, n_parallel=n_parallel, max_queue=max_queue)
            else:
                if self.family is None or self.family.closed:
                    self.family = Family.load(
                        recipe, self.pool, capacity=capacity, n_parallel=n_parallel, max_queue=max_queue
                    )
                view = self.family.view(recipe)
            self.views[vid] = view
        return {
            "n_ctx": view.n_ctx,
            "n_parallel": view.n_parallel,
            "n_vocab": view.vocab.n_vocab,
            "template": view.template.source,
            "load_s": view.load_s,
            "family": capacity is not None,
        }

    def _close(self, vid: int) -> int:
        with self._lock:
            view = self.views.pop(vid, None)
            embedder = self.embedders.pop(vid, None)
        for obj in (embedder, view):
            if obj is not None:
                obj.close()
        return len(self.views)

    def _call(self, vid: int, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        if method not in wire.CALLS:
            raise ValueError(f"a runner does not answer {method!r}")
        if method == "family_info":
            if self.family is None:
                return None
            names = {self.views[v]: n for v, n in args[0].items() if v in self.views}
            return self.family.info(names)
        view = self.views[vid]
        if method == "embed":
            return self._embedder(vid, view).embed(*args, **kwargs)
        if method == "active":
            return len(view.scheduler.active())
        if method == "waiting":
            return view.scheduler.waiting()
        return getattr(view, method)(*args, **kwargs)

    def _embedder(self, vid: int, view: Composite) -> Any:
        with self._lock:
            if vid not in self.embedders:
                self.embedders[vid] = embedder_for(view.recipe, self.pool)
            return self.embedders[vid]

    # -- streams ------------------------------------------------------------------------------

    def _generate(self, rid: int, vid: int, req: GenerateRequest) -> None:
        cancel, credit = self.streams[rid]
        chunks = None
        try:
            view = self.views[vid]
            if self.faults:
                self._fault(view, req)
            chunks = view.generate(req, cancel)
            for chunk in chunks:
                credit.acquire()  # the server's consumer is at most WINDOW chunks behind
                if cancel.is_set():
                    break
                self.send((wire.CHUNK, rid, chunk))
        except BaseException as exc:  # noqa: BLE001 - the stream's own error, back to its caller
            try:
                self.send((wire.ERR, rid, wire.pack(exc)))
            except OSError:
                os._exit(0)
        finally:
            if chunks is not None:
                chunks.close()  # cancels the request in the scheduler if it is still running
            self.streams.pop(rid, None)

    def _fault(self, view: Composite, req: GenerateRequest) -> None:
        """Test-only: abort (as llama.cpp does on a failed GGML_ASSERT) or hang on a magic prompt."""
        text = req.prompt if isinstance(req.prompt, str) else view.detokenize(req.prompt)
        if wire.ABORT_PROMPT in text:
            time.sleep(0.2)  # let other streams have a chunk in flight
            os.abort()
        if wire.HANG_PROMPT in text:
            threading.Event().wait()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="runner %(process)d: %(message)s")
    conn = Connection(int(argv[0]))
    Served(conn).run()
    return 0
