"""The runners of one server: one per loaded composite, one per adapter family (its views share it).

Blocking (loads take seconds): the manager calls it off the event loop. Opening and closing the
views of one runner are serialised, so the last view's close (which stops the runner) and a new
view's open never race; a runner that died is replaced on the next open.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.runtime.family import family_key
from nanocommander.engine.runtime.runner import wire
from nanocommander.engine.runtime.runner.proxy import GONE, RemoteComposite, Runner


class Fleet:
    def __init__(self, timeout: float | None = None):
        self.timeout = timeout
        self.runners: dict[Any, Runner] = {}
        self._units: dict[int, Any] = {}  # view id -> its runner's key
        self._locks: dict[Any, threading.Lock] = {}
        self._mu = threading.Lock()
        self._vids = itertools.count(1)

    def running(self, recipe: Recipe) -> bool:
        """Whether an adapter family runner for `recipe` serves already (a new view costs its adapter)."""
        key = family_key(recipe)
        runner = self.runners.get(("family", key)) if key is not None else None
        return runner is not None and runner.lost is None

    def _lock(self, key: Any) -> threading.Lock:
        with self._mu:
            return self._locks.setdefault(key, threading.Lock())

    def open(
        self,
        recipe: Recipe,
        name: str,
        *,
        n_parallel: int | None = None,
        family: int | None = None,
        max_queue: int | None = None,
    ) -> RemoteComposite:
        """Load `recipe` as `name` in a runner: a new one, or its adapter family's (`family`: capacity)."""
        vid = next(self._vids)
        fkey = family_key(recipe) if family is not None else None
        key = ("family", fkey) if fkey is not None else ("composite", vid)
        with self._lock(key):
            runner = self.runners.get(key)
            if runner is None or runner.lost is not None:
                runner = Runner(name if fkey is None else f"family of {name}", timeout=self.timeout).start()
                self.runners[key] = runner
            options = {
                "n_parallel": n_parallel,
                "family": family if fkey is not None else None,
                "max_queue": max_queue,
            }
            try:
                facts = runner.open(vid, name, recipe, options)
            except BaseException:
                runner.names.pop(vid, None)
                if not runner.names or runner.lost is not None:  # nothing else in it
                    runner.stop()
                    self.runners.pop(key, None)
                raise
            self._units[vid] = key
            return RemoteComposite(runner, vid, recipe, facts)

    def close(self, comp: RemoteComposite) -> None:
        """Close one view; the runner stops with its last view (a dead one is only forgotten)."""
        key = self._units.pop(comp.vid, None)
        if key is None or comp.closed:
            return
        comp.closed = True
        with self._lock(key):
            runner = comp.runner
            runner.names.pop(comp.vid, None)
            left = 0
            if runner.lost is None:
                try:
                    left = runner.call(wire.CLOSE, comp.vid)
                except GONE:
                    left = 0
            if left == 0:
                runner.stop()
                if self.runners.get(key) is runner:
                    del self.runners[key]

    def stop(self) -> None:
        """Stop every runner at once (each closes its models first)."""
        runners = list(self.runners.values())
        self.runners.clear()
        self._units.clear()
        if runners:
            with ThreadPoolExecutor(max_workers=len(runners)) as pool:
                list(pool.map(lambda r: r.stop(), runners))
