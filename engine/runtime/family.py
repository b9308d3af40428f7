"""Adapter families: many composites served from one large and one base context set.

Composites whose large and base are the same files (with the same load settings) and whose
tuned member is a LoRA adapter on that base differ only in that adapter and in per-request
settings (alpha, template, system, sampling). A `Family` loads the large and base contexts
once and keeps a small LRU of tuned contexts on the base's weights, each with its own KV
cache (its `n_seq` slots, like every member context). Each composite of the family is a
`FamilyComposite`: a Composite that holds the family's one `Core` (members, vocabulary, threads
and scheduler; engine/runtime/core.py) with its own recipe, chat template and adapter, as every
Composite holds its core. One scheduler serves the requests of every member in the same rounds.

When the scheduler gives a request its slot, the request is bound to a tuned context that
holds its view's adapter: one that already has it (its KV cache is still valid for that
adapter), else a new context while there are fewer than `capacity`, else the least recently
used idle one, whose adapter is switched (llama_set_adapters_lora) and whose KV cache is
cleared, since llama.cpp keeps it. A context serving a request is never switched (if all
are busy a further one is made, and closed once idle). `hold_many` sends each request's
tuned Holds to its context (`member_for`). So going from composite A to B costs an adapter
switch and the tuned member's prompt; the large and base contexts keep their KV cache across
the switch, and nothing is reloaded.

Adapters stay loaded while a tuned context holds them, plus the `capacity` most recently used
others; the rest are freed and loaded again when asked for (about a millisecond from the page
cache for a 1.5 MB adapter). Keeping all of them would cost more than their size: llama.cpp
sizes every context's compute graph by all the adapters its model has loaded (graph_max_nodes),
so with 100 SmolLM2-135M adapters loaded each tuned context grew by about 60 MB.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanocommander.engine.llama.member import Member
from nanocommander.engine.request.options import LoadOptions
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.runtime.composite import Composite
from nanocommander.engine.runtime.core import Core
from nanocommander.engine.runtime.pool import ModelPool
from nanocommander.errors import ModelLoadError

DEFAULT_CAPACITY = 3  # tuned contexts per family: each costs one KV cache of the base's shape
MMAP_THRESHOLD = 256 * 1024  # see steady_allocator

AdapterKey = tuple[Path, float]  # adapter file and scale: what makes two tuned contexts interchangeable


def family_key(recipe: Recipe) -> tuple | None:
    """What composites must share to be served by one Family (None: not an adapter composite).

    The large and base files (by identity: a store blob hard-linked from a file is that file) and
    every setting that shapes their contexts; alpha, template, system and sampling may differ.
    """
    tuned = recipe.tuned
    if not tuned.is_adapter or tuned.adapter is None or tuned.adapter.path is None:
        return None
    parts: list[Any] = []
    for spec in (recipe.large, recipe.base):
        if spec.source is None or spec.source.path is None:
            return None
        parts += [_file_id(Path(spec.source.path)), spec.gpu_layers, spec.n_ctx, spec.threads]
        parts += [tuple(spec.rpc), tuple(spec.tensor_split)]  # where its layers live
    params = recipe.parameters
    parts += [
        tuned.n_ctx,
        tuned.threads,
        params.get("num_ctx"),
        params.get("num_batch"),
        params.get("num_thread"),
        params.get("num_parallel"),
        LoadOptions.from_parameters(params).deterministic,  # the mode shapes every context
    ]
    return tuple(parts)


def _file_id(path: Path) -> tuple[int, int] | Path:
    """The file itself, so a store blob and the file it was hard-linked from are one member."""
    try:
        st = path.stat()
        return (st.st_dev, st.st_ino)
    except OSError:
        return path.resolve()


@functools.cache
def steady_allocator() -> None:
    """Pin glibc's mmap threshold (once per process) so big buffers go back to the OS when freed.

    Every adapter switch makes llama.cpp reserve its compute graph again, freeing and allocating
    buffers; glibc raises its mmap threshold after the first such free, and the buffers then
    fragment the heap: resident memory grew by about 100 MB over the first 30 switches on
    SmolLM2-135M with three tuned contexts, 39 MB with the threshold pinned (and then stayed).
    A MALLOC_MMAP_THRESHOLD_ set by the user is left alone; other C libraries are left alone.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, MMAP_THRESHOLD)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def adapter_key(recipe: Recipe) -> AdapterKey:
    return (Path(recipe.tuned.adapter.path).resolve(), float(recipe.tuned.adapter_scale))  # type: ignore[union-attr,arg-type]


@dataclass
class TunedContext:
    """One tuned context and the adapter it holds."""

    member: Member
    key: AdapterKey | None
    users: int = 0  # requests bound to it right now; a busy context is never switched
    last: int = 0  # LRU clock


@dataclass
class FamilyStats:
    switches: int = 0
    switch_s: list[float] = field(default_factory=list)  # the last switch times (adapter + KV clear)
    contexts_made: int = 0


class Family:
    """One large and base context set plus an LRU of tuned contexts, serving every composite of a family."""

    def __init__(self, core: FamilyCore, first: AdapterKey, key: tuple, capacity: int = DEFAULT_CAPACITY):
        self.core, self.key, self.capacity = core, key, max(1, capacity)
        core.family = self
        self.contexts = [TunedContext(core.members["tuned"], first)]
        self.views: list[FamilyComposite] = []
        self._warm: OrderedDict[Path, None] = (
            OrderedDict()
        )  # adapters kept loaded besides the contexts' (LRU)
        self.bound: dict[int, TunedContext] = {}  # scheduler slot (seq) -> its request's tuned context
        self.stats = FamilyStats()
        self.closed = False
        self._mu = threading.Lock()  # tuned contexts, views and bindings
        self._clock = itertools.count(1)

    @classmethod
    def load(
        cls, recipe: Recipe, pool: ModelPool | None = None, *, capacity: int = DEFAULT_CAPACITY, **kwargs: Any
    ) -> Family:
        """Load large, base and one tuned context (with `recipe`'s adapter); views come from `view`."""
        key = family_key(recipe)
        if key is None:
            raise ValueError(f"{recipe.name}: not an adapter composite over local files")
        steady_allocator()
        capacity = max(1, capacity)
        core = FamilyCore.load(recipe, pool, workers=2 + capacity, **kwargs)  # every context at once
        return cls(core, adapter_key(recipe), key, capacity)  # type: ignore[arg-type]

    # -- views ------------------------------------------------------------------------------

    def view(self, recipe: Recipe) -> FamilyComposite:
        """The composite `recipe` served by this family (its adapter is loaded now, once per family)."""
        t0 = time.perf_counter()
        if family_key(recipe) != self.key:
            raise ValueError(f"{recipe.name} is not a member of this family")
        with self._mu:  # drop() cannot free the models meanwhile
            if self.closed:
                raise ModelLoadError("the model family was unloaded")
            view = FamilyComposite(recipe, self)
            self._keep_warm(view.adapter[0])  # a bad adapter fails now, not mid-request
            self.views.append(view)
        view.measure_steer()  # outside the lock: the probes run through the scheduler
        view.load_s = time.perf_counter() - t0
        return view

    def drop(self, view: FamilyComposite) -> None:
        """Forget a closed view; the last one closes the family."""
        with self._mu:
            if view in self.views:
                self.views.remove(view)
            if self.views or self.closed:
                return
            self.closed = True
        self._close()

    def _close(self) -> None:
        self.core.scheduler.stop()  # requests still running end with a cancel chunk; no round runs after
        for tc in self.contexts:
            if tc.member is not self.core.members["tuned"]:
                tc.member.close()
        while self._warm:
            self.core.members["base"].model.release_adapter(self._warm.popitem()[0])
        self.core.close()  # large, base, the first tuned context and the pooled weights

    # -- tuned contexts ---------------------------------------------------------------------

    def bind(self, seq: int, key: AdapterKey) -> None:
        """Give the request in slot `seq` a tuned context holding adapter `key` (the scheduler's thread,
        between rounds), switching the least recently used idle one if need be."""
        tc = self._context(key)
        with self._mu:
            self.bound[seq] = tc

    def tuned_for(self, seq: int) -> Member:
        with self._mu:
            tc = self.bound.get(seq)
        if tc is None:
            raise RuntimeError(f"no tuned context is bound to slot {seq}")
        return tc.member

    def release(self, seq: int) -> None:
        with self._mu:
            tc = self.bound.pop(seq, None)
            if tc is None:
                return
            tc.users -= 1
            first = self.core.members["tuned"]  # the core's own context stays for the family's life
            idle = sorted(
                (s for s in self.contexts if s.users == 0 and s.member is not first), key=lambda s: s.last
            )
            for tc in idle[: max(0, len(self.contexts) - self.capacity)]:  # made while every context was busy
                self.contexts.remove(tc)
                tc.member.close()

    def _context(self, key: AdapterKey) -> TunedContext:
        with self._mu:
            tc = next((s for s in self.contexts if s.key == key), None)
            if tc is None:
                idle = [s for s in self.contexts if s.users == 0]
                if len(self.contexts) < self.capacity or not idle:
                    tc = self._new_context()
                else:
                    tc = min(idle, key=lambda s: s.last)
                self._switch(tc, key)
            tc.last = next(self._clock)
            tc.users += 1
            return tc

    def _new_context(self) -> TunedContext:
        first = self.contexts[0].member
        member = Member(
            "tuned",
            first.model,
            n_ctx=first.n_ctx,
            threads=first.threads,
            n_batch=first.n_batch,
            n_seq=first.n_seq,
            deterministic=first.deterministic,
        )
        tc = TunedContext(member, None)
        self.contexts.append(tc)
        self.stats.contexts_made += 1
        return tc

    def _switch(self, tc: TunedContext, key: AdapterKey) -> None:
        t0 = time.perf_counter()
        tc.member.set_adapter(*key)  # also clears its KV cache: it was computed under the old adapter
        tc.key = key
        self._keep_warm(key[0])
        self.stats.switches += 1
        self.stats.switch_s = [*self.stats.switch_s[-99:], time.perf_counter() - t0]

    def _keep_warm(self, path: Path) -> None:
        """Mark `path` recently used; keep it and the `capacity` most recent loaded (caller holds _mu)."""
        model = self.core.members["base"].model
        if path in self._warm:
            self._warm.move_to_end(path)
            return
        model.retain_adapter(path)
        self._warm[path] = None
        while len(self._warm) > self.capacity:
            model.release_adapter(self._warm.popitem(last=False)[0])

    def _paths(self) -> set[Path]:
        return {v.adapter[0] for v in self.views}

    # -- description ------------------------------------------------------------------------

    def info(self, names: Mapping[FamilyComposite, str] | None = None) -> dict[str, Any]:
        """For /api/ps: the members served (`names`: how the caller calls each view; default the recipe
        names), the adapters loaded, what each tuned context holds, and the switch count."""
        with self._mu:
            label = {v: (names or {}).get(v, v.recipe.name) for v in self.views}
            by_adapter = {v.adapter: label[v] for v in self.views}
            return {
                "members": sorted(set(label.values())),
                "adapters": sorted(  # loaded now: in a tuned context or kept warm
                    str(p) for p in self.core.members["base"].model.loaded_adapters() if p in self._paths()
                ),
                "tuned_contexts": [
                    {
                        "adapter": str(s.key[0]) if s.key else None,
                        "model": by_adapter.get(s.key),
                        "busy": s.users > 0,
                    }
                    for s in self.contexts
                ],
                "capacity": self.capacity,
                "switches": self.stats.switches,
                "switch_ms": _summary(self.stats.switch_s),  # the last 100 adapter switches
            }


def _summary(seconds: list[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    ordered = sorted(seconds)
    return {"median": round(ordered[len(ordered) // 2] * 1000, 3), "max": round(ordered[-1] * 1000, 3)}


class FamilyCore(Core):
    """The family's loaded members: its scheduler serves every view's requests, and each request's
    tuned Holds go to the tuned context bound to its slot."""

    family: Family

    def member_for(self, role: str, seq: int) -> Member:
        return self.family.tuned_for(seq) if role == "tuned" else self.members[role]

    def release(self, seq: int) -> None:
        self.family.release(seq)


class FamilyComposite(Composite):
    """One composite of a family: it holds the family's core (members, scheduler) and has its own
    recipe, template and adapter; each of its requests' slots is bound to a tuned context with it.

    Made by `Family.view`, never by `Composite.load`; closing it drops the view, and the last
    view to close closes the family.
    """

    def __init__(self, recipe: Recipe, family: Family):
        super().__init__(recipe, family.core)
        self.family, self.adapter = family, adapter_key(recipe)

    def bind(self, seq: int) -> None:
        self.family.bind(seq, self.adapter)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.family.drop(self)

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["members"]["tuned"]["adapter"] = str(self.adapter[0])
        out["family"] = self.family.info()
        return out
