"""Loaded models: load on first use, keep alive for a while; each core's scheduler queues its requests.

Composites that share member files share the loaded weights through one ModelPool.
Composites of one adapter family (same large and base, a LoRA as tuned: engine/runtime/family.py)
share more: one large and base context set and a few tuned contexts whose adapter is
switched per request; each name still has its own keep_alive, and the family unloads
with its last member. Generation runs on the engine's worker thread; the event loop
never blocks on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanocommander import units
from nanocommander.backend import accesslog
from nanocommander.backend.config import Settings
from nanocommander.engine.llama.rpc import devices as rpc
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import Chunk, GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.engine.runtime.core import embedder_for
from nanocommander.engine.runtime.family import Family, FamilyComposite, family_key
from nanocommander.engine.runtime.memory import free_memory
from nanocommander.engine.runtime.pool import ModelPool
from nanocommander.engine.runtime.runner.fleet import Fleet
from nanocommander.engine.runtime.runner.proxy import RemoteComposite
from nanocommander.errors import InsufficientMemory, ModelLoadError, NanoCommanderError, warn_once
from nanocommander.gguf_file import read_gguf
from nanocommander.registry import Registry, estimate_memory, resolve
from nanocommander.registry.name import canonical

log = logging.getLogger("nanocommander.models")


def memory_estimate(
    recipe: Recipe,
    loaded: set[Path] | None = None,
    num_parallel: int | None = None,
    tuned_contexts: int = 1,
) -> tuple[int, int | None]:
    """(bytes needed, bytes free): the registry's estimate (weights + KV cache for every slot, and
    for every tuned context of an adapter family) when it offers one, else the distinct member
    and adapter files not yet loaded against MemAvailable."""
    files = _member_files(recipe)
    shared = files & {p.resolve() for p in loaded or ()}
    try:
        estimate = estimate_memory(recipe, num_parallel=num_parallel, tuned_contexts=tuned_contexts)
        return max(int(estimate.total) - sum(p.stat().st_size for p in shared), 0), estimate.free
    except (ValueError, OSError):  # a header that does not read: count the files instead
        pass
    return sum(p.stat().st_size for p in files - shared if p.exists()), free_memory()


def _member_files(recipe: Recipe) -> set[Path]:
    out = set()
    for spec in recipe.members:
        for src in (spec.source, spec.adapter):
            if src is not None and src.path is not None:
                out.add(Path(src.path).resolve())
    return out


def check_headers(recipe: Recipe) -> None:
    """Read every member's GGUF header first: a cut or foreign file gets the header reader's reason
    (truncated, no magic) instead of llama.cpp's bare "failed to load"."""
    for path in _member_files(recipe):
        if path.is_file():
            read_gguf(path)


def blame(recipe: Recipe, exc: Exception) -> str:
    """The error prefixed by the member whose file it names, so a user knows which file to replace."""
    for spec in recipe.members:
        for src in (spec.source, spec.adapter):
            if src is not None and src.path is not None and str(src.path) in str(exc):
                return f"member {spec.role}: {exc}"
    return str(exc)


@dataclass
class Loaded:
    name: str
    composite: Composite | RemoteComposite
    active: int = 0  # requests in `generate`, waiting for a slot (in the scheduler) or streaming
    keep_alive: float = 300.0
    expires_at: float = field(default_factory=lambda: time.time() + 300)
    last_used: float = field(default_factory=time.time)
    embedder: Any = None  # engine.embed.Embedder, made on the first embedding request


class Catalog:
    """Where model names come from: recipes named on the command line, then the store."""

    def __init__(self, recipes: list[Recipe]):
        self.recipes = {canonical(r.name): r for r in recipes}

    def lookup(self, name: str) -> tuple[str, Recipe]:
        key = canonical(name)
        if key in self.recipes:
            return key, self.recipes[key]
        return key, resolve(key)

    def entries(self) -> list[tuple[str, Recipe, float]]:
        out = []
        for key, recipe in self.recipes.items():
            mtime = recipe.path.stat().st_mtime if recipe.path and Path(recipe.path).exists() else time.time()
            out.append((key, recipe, mtime))
        try:
            stored = Registry().list()
        except Exception:  # no store yet, or an unreadable one: serve the command-line recipes
            return out
        for entry in stored:
            key = canonical(entry.name.display())
            if key not in self.recipes:
                try:
                    out.append((key, self.lookup(key)[1], entry.modified_at.timestamp()))
                except Exception as exc:  # a broken entry leaves the list; say why (`verify` tells more)
                    warn_once(log, f"model {key!r} is left out of the list: {exc}")
        return out


class ModelManager:
    def __init__(self, settings: Settings, catalog: Catalog):
        self.settings, self.catalog = settings, catalog
        self.pool = ModelPool()
        self.fleet = Fleet() if settings.runners else None  # None: models load in this process
        self.loaded: dict[str, Loaded] = {}
        self.families: dict[tuple, Family] = {}
        self._locks: dict[Any, asyncio.Lock] = {}
        self.last_used_name: str | None = None
        self._reaper: asyncio.Task | None = None

    async def start(self) -> None:
        rpc.keep_serving_on_loss()  # a lost RPC server ends its requests, not the whole server
        self._reaper = asyncio.create_task(self._reap())

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        if self.fleet is not None:  # every runner at once, each closing its models first
            self.loaded.clear()
            await asyncio.to_thread(self.fleet.stop)
        for name in list(self.loaded):
            await self.unload(name, force=True)

    async def get(self, name: str, keep_alive: float | None = None) -> Loaded:
        key, recipe = await asyncio.to_thread(self.catalog.lookup, name)  # may read the store
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            loaded = self.loaded.get(key)
            if loaded is not None and isinstance(loaded.composite, RemoteComposite) and loaded.composite.lost:
                del self.loaded[key]  # its runner died: load it again
                await asyncio.to_thread(self.fleet.close, loaded.composite)  # type: ignore[union-attr]
                loaded = None
            if loaded is not None and rpc.is_lost(loaded.composite):  # its RPC server went away: reload
                rpc.strand(self.loaded.pop(key).composite)
                loaded = None
            if loaded is None:
                try:
                    await asyncio.to_thread(check_headers, recipe)
                    comp = await (
                        self._load(recipe) if self.fleet is None else self._load_runner(key, recipe)
                    )
                except (ModelLoadError, OSError, ValueError) as exc:
                    if isinstance(exc, NanoCommanderError) and not isinstance(exc, ModelLoadError):
                        raise  # a refusal with its own status (context, vocabulary, memory)
                    raise ModelLoadError(f"model {key!r} cannot be loaded: {blame(recipe, exc)}") from exc
                loaded = Loaded(key, comp)
                self.loaded[key] = loaded
        self.touch(loaded, keep_alive)
        self.last_used_name = key
        return loaded

    async def _load(self, recipe: Recipe) -> Composite:
        fkey = family_key(recipe)
        if fkey is None:
            await asyncio.to_thread(self.check_memory, recipe)
            return await asyncio.to_thread(
                Composite.load,
                recipe,
                self.pool,
                n_parallel=self.settings.num_parallel,
                max_queue=self.settings.max_queue,
            )
        async with self._locks.setdefault(("family", fkey), asyncio.Lock()):
            family = self.families.get(fkey)
            if family is not None and rpc.is_lost(family.core):  # its RPC server went away: a new family
                rpc.strand(family.core)
                family = None
            if family is None or family.closed:
                await asyncio.to_thread(self.check_memory, recipe, self.settings.family_slots)
                family = await asyncio.to_thread(
                    Family.load,
                    recipe,
                    self.pool,
                    capacity=self.settings.family_slots,
                    n_parallel=self.settings.num_parallel,
                    max_queue=self.settings.max_queue,
                )
                self.families[fkey] = family
            else:  # a new member costs its adapter
                await asyncio.to_thread(self.check_adapter_memory, family, recipe)
            return await asyncio.to_thread(family.view, recipe)

    async def _load_runner(self, key: str, recipe: Recipe) -> RemoteComposite:
        """Load `recipe` in a runner of its own, or in its adapter family's runner."""
        assert self.fleet is not None
        family = self.settings.family_slots if family_key(recipe) is not None else None
        if family is not None and self.fleet.running(recipe):  # a new member costs its adapter
            path = Path(recipe.tuned.adapter.path)  # type: ignore[union-attr,arg-type]
            await asyncio.to_thread(lambda: self._refuse_beyond(path.stat().st_size, free_memory()))
        else:
            await asyncio.to_thread(self.check_memory, recipe, family or 1)
        return await asyncio.to_thread(
            self.fleet.open,
            recipe,
            key,
            n_parallel=self.settings.num_parallel,
            family=family,
            max_queue=self.settings.max_queue,
        )

    def touch(self, loaded: Loaded, keep_alive: float | None) -> None:
        ka = self.settings.keep_alive if keep_alive is None else keep_alive
        loaded.keep_alive = ka
        loaded.last_used = time.time()
        loaded.expires_at = float("inf") if ka < 0 else time.time() + ka

    def check_memory(self, recipe: Recipe, tuned_contexts: int = 1) -> None:
        """Refuse a model whose estimate exceeds free memory (weights already in the pool are free)."""
        loaded = set(self.pool.loaded())
        if self.fleet is not None:  # runners mmap their weights: files loaded already cost no more
            loaded |= {p for l in self.loaded.values() for p in _member_files(l.composite.recipe)}  # noqa: E741
        needed, free = memory_estimate(recipe, loaded, self.settings.num_parallel, tuned_contexts)
        self._refuse_beyond(needed, free)

    def check_adapter_memory(self, family: Family, recipe: Recipe) -> None:
        path = Path(recipe.tuned.adapter.path)  # type: ignore[union-attr,arg-type]
        loaded = any(v.adapter[0] == path.resolve() for v in family.views)
        self._refuse_beyond(0 if loaded else path.stat().st_size, free_memory())

    def _refuse_beyond(self, needed: int, free: int | None) -> None:
        if free is not None and needed > free:
            raise InsufficientMemory(
                f"model requires more system memory ({units.memory(needed)}) than is available ({units.memory(free)}); "
                "unload other models or use smaller members"
            )

    async def unload(self, name: str, *, force: bool = False) -> bool:
        """Unload now if idle; a model in use is unloaded when its last request ends (as Ollama does)."""
        key = canonical(name)
        loaded = self.loaded.get(key)
        if loaded is None:
            return False
        if not force and loaded.active:
            loaded.keep_alive, loaded.expires_at = 0, time.time()
            return True
        del self.loaded[key]
        if isinstance(loaded.composite, RemoteComposite):  # the runner stops with its last model
            await asyncio.to_thread(self.fleet.close, loaded.composite)  # type: ignore[union-attr]
            return True
        if loaded.embedder is not None:
            await asyncio.to_thread(rpc.close_or_strand, loaded.embedder)
        comp = loaded.composite
        if isinstance(comp, FamilyComposite):  # the family closes with its last member
            async with self._locks.setdefault(("family", comp.family.key), asyncio.Lock()):
                await asyncio.to_thread(rpc.close_or_strand, comp)
                if comp.family.closed and self.families.get(comp.family.key) is comp.family:
                    del self.families[comp.family.key]
            return True
        await asyncio.to_thread(rpc.close_or_strand, comp)
        return True

    async def embedder(self, loaded: Loaded) -> Any:
        """The model's embedding context: the recipe's `embedding` GGUF, else the large member (in a
        runner: the runner makes it, and the composite's `embed` goes to it)."""
        if isinstance(loaded.composite, RemoteComposite):
            return loaded.composite
        async with self._locks.setdefault(loaded.name, asyncio.Lock()):
            if loaded.embedder is None:
                comp = loaded.composite
                loaded.embedder = await asyncio.to_thread(embedder_for, comp.recipe, comp.pool)
        return loaded.embedder

    async def generate(
        self, loaded: Loaded, req: GenerateRequest, load_s: float = 0.0
    ) -> AsyncIterator[Chunk]:
        """Stream a generation (its scheduler queues it for a slot, or refuses it when the queue is
        full); leaving early cancels the generation within one token. `load_s`, the time this request
        spent in `get` (the load, on the request that loaded the model; ~0 when warm, as Ollama
        reports it), goes into the final chunk's stats."""
        loaded.active += 1
        alpha = loaded.composite.recipe.alpha if req.alpha is None else req.alpha
        accesslog.note(model=loaded.name, alpha=alpha, member=req.member)
        try:
            stream = loaded.composite.stream(req)
            if not isinstance(loaded.composite, RemoteComposite):
                stream = rpc.guard(loaded.composite, stream)
            async for chunk in stream:
                if chunk.stats is not None:
                    chunk.stats.load_s = load_s
                    accesslog.note(tokens=(chunk.stats.prompt_tokens, chunk.stats.eval_count))
                yield chunk
        finally:
            loaded.active -= 1
            self.touch(loaded, loaded.keep_alive)
            if loaded.keep_alive == 0 and loaded.active == 0:
                await self.unload(loaded.name)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for name, loaded in list(self.loaded.items()):
                lost = isinstance(loaded.composite, RemoteComposite) and loaded.composite.lost
                if loaded.active == 0 and (lost or loaded.expires_at <= now):
                    await self.unload(name)

    def default_name(self) -> str | None:
        """Kobold clients name no model: the configured default, else the only one, else the last used."""
        if self.settings.default_model:
            return canonical(self.settings.default_model)
        names = [key for key, _, _ in self.catalog.entries()]
        if len(names) == 1:
            return names[0]
        return self.last_used_name or (names[0] if names else None)

    def ps(self) -> list[dict[str, Any]]:
        return [{"name": l.name, "loaded": l, "info": l.composite.info()} for l in self.loaded.values()]  # noqa: E741

    def units(self) -> list[tuple[list[Loaded], Any]]:
        """Loaded names grouped by what is loaded: one group per adapter family, one per other composite."""
        groups: dict[int, tuple[list[Loaded], Family | None]] = {}
        for loaded in self.loaded.values():
            family = getattr(loaded.composite, "family", None)  # a Family, a RemoteFamily or None
            groups.setdefault(id(family or loaded), ([], family))[0].append(loaded)
        return list(groups.values())
