"""`Registry`: the Python API behind the CLI verbs and the server's /api/{pull,push,create,copy,delete,tags,show}.

Verbs that move data (`pull`, `create`, `push`) return iterators of Ollama-shaped
progress events and do their work as they are consumed; the last event is
`{"status": "success"}`, and a failure raises from the iterator. The others return
plain values. Names are parsed with `Name.parse`, so a bad name raises `InvalidName`
before anything touches the disk, and an unknown one raises `ModelNotFound`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nanocommander.engine.request.decode_options import Steer
from nanocommander.engine.request.recipe import ROLES, Recipe, Source
from nanocommander.engine.runtime.memory import MemoryEstimate, estimate_memory
from nanocommander.errors import InvalidName, ReferenceNotFound, RegistryError
from nanocommander.gguf_file import GGUFInfo, read_gguf
from nanocommander.registry import hub, pull
from nanocommander.registry.family import check_recipe_adapter, family_id, member_recipe
from nanocommander.registry.name import Name
from nanocommander.registry.push import push
from nanocommander.registry.store import (
    ADAPTER_TYPE,
    LICENSE_TYPE,
    MODEL_TYPE,
    RECIPE_TYPE,
    SYSTEM_TYPE,
    TEMPLATE_TYPE,
    Manifest,
    Store,
    hash_file,
    parse_digest,
)

Event = dict[str, Any]


@dataclass(frozen=True)
class ModelEntry:
    """One row of `list` (and of /api/tags)."""

    name: Name
    digest: str  # sha256 hex of the manifest, as Ollama reports it
    size: int  # bytes of the distinct blobs it uses
    modified_at: datetime
    details: dict[str, Any]
    family: str | None = None  # id shared by composites over the same large and base with an adapter

    def to_ollama(self) -> dict[str, Any]:
        return {
            "name": self.name.display(),
            "model": self.name.display(),
            "digest": self.digest,
            "size": self.size,
            "modified_at": self.modified_at.isoformat(),
            "details": self.details,
        }


@dataclass(frozen=True)
class MemberDetails:
    role: str
    kind: str  # "model" or "adapter"
    origin: str  # hf.co/user/repo@commit/file, a path, or ollama:name
    digest: str
    info: GGUFInfo


@dataclass(frozen=True)
class ModelDetails:
    """What `show` prints and /api/show returns."""

    name: Name
    recipe: Recipe  # resolved: member paths are blobs
    recipe_text: str  # the stored recipe YAML (pinned sources)
    members: list[MemberDetails]
    template: str | None
    system: str | None
    license: str | None
    memory: MemoryEstimate
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name.display(),
            "recipe": self.recipe_text,
            "alpha": self.recipe.alpha,
            "parameters": dict(self.recipe.parameters),
            "template": self.template,
            "system": self.system,
            "license": self.license,
            "details": self.details,
            "members": [
                {"role": m.role, "kind": m.kind, "from": m.origin, "digest": m.digest, **m.info.to_dict()}
                for m in self.members
            ],
            "memory": self.memory.to_dict(),
        }


@dataclass(frozen=True)
class VerifyReport:
    checked: int
    corrupt: list[tuple[str, str]]  # (digest, why)
    affected: list[str]  # models that use a corrupt blob and need pulling again
    removed: list[str]
    partials: int = 0  # bytes of unfinished downloads kept for resuming (removed with fix)
    stale: int = 0  # temp files left by killed processes (removed with fix)
    unreferenced: int = 0  # blobs no model uses, e.g. after an interrupted rm (collected with fix)


class Registry:
    """The local model store plus the Hub; one instance per store root."""

    def __init__(self, root: str | Path | None = None, settings: hub.HubSettings | None = None):
        self.store = Store(root)
        self._settings = settings

    @property
    def settings(self) -> hub.HubSettings:
        return self._settings or hub.HubSettings.from_env()  # env read per call, not frozen at import

    # -- moving data -------------------------------------------------------------------------

    def pull(self, ref: str | Path) -> Iterator[Event]:
        """Pull a recipe file (registered under its `name:`), `hf.co/user/repo[:tag]`, or refresh a stored model."""
        if _is_recipe_file(ref):
            recipe = Recipe.load(ref)
            name = Name.parse(recipe.name)
            return self._pull(lambda: recipe, name)
        name = Name.parse(str(ref))
        if name.is_hub:
            return self._pull(lambda: pull.hub_recipe(self.settings, name), name)
        if self.store.find(name) is None:
            raise ReferenceNotFound(
                f"'{ref}' is neither a recipe file nor hf.co/user/repo[:tag], and no model of that "
                "name is stored; to register a recipe run `pull RECIPE.yaml` or `create NAME -f`"
            )
        return self._pull(lambda: self.stored_recipe(name), name)

    def create(
        self,
        name: str,
        *,
        path: str | Path | None = None,
        text: str | None = None,
        recipe: Recipe | None = None,
    ) -> Iterator[Event]:
        """Register a recipe (a file, YAML text or a Recipe) under `name` and fetch its members."""
        target = Name.parse(name)
        if sum(x is not None for x in (path, text, recipe)) != 1:
            raise ValueError("give exactly one of path, text or recipe")
        if path is not None:
            recipe = Recipe.load(path)
        elif text is not None:
            recipe = Recipe.parse(text, check_files=True)
        check_recipe_adapter(self.store, recipe)  # type: ignore[arg-type]  # refused now, nothing written
        return self._pull(lambda: recipe, target)  # type: ignore[arg-type,return-value]

    def create_member(
        self,
        name: str,
        family: str | Path | Recipe,
        adapter: str | Path,
        *,
        alpha: float | None = None,
        adapter_scale: float | None = None,
        steer: Steer | None = None,
    ) -> Iterator[Event]:
        """Register `name` over the large and base of `family` (a stored name, a recipe file or a
        Recipe) with `adapter` as its tuned member: the stored large and base blobs are reused.
        `steer` (what calibrate chose for this adapter) replaces the family's steering.

        Raises AdapterMismatch (nothing written) when the adapter does not fit the base.
        """
        path = Path(adapter).expanduser().resolve()
        if not path.is_file():
            raise RegistryError(f"adapter file not found: {adapter}")
        if isinstance(family, Recipe):
            source = family
        elif _is_recipe_file(family):
            source = Recipe.load(family)
        else:
            source = self.stored_recipe(self.resolve(str(family)).name)  # its blobs must all be here
        recipe = member_recipe(
            source, Name.parse(name).model, Source(path=path), alpha=alpha, adapter_scale=adapter_scale
        )
        if steer is not None:
            recipe = dataclasses.replace(recipe, steer=steer)
        return self.create(name, recipe=recipe)

    def _pull(self, get_recipe, name: Name) -> Iterator[Event]:
        def work(emit, cancel) -> None:
            emit({"status": "pulling manifest"})
            recipe = get_recipe()
            pull.pull_recipe(self.store, self.settings, recipe, name, _skip_first(emit), cancel)

        return pull.run_events(work)

    def push(self, name: str, target: str, *, private: bool = False) -> Iterator[Event]:
        """Upload a model's recipe, its local members and a model card to `hf.co/user/repo[:tag]`."""

        source, dest = Name.parse(name), Name.parse(target)
        if not dest.is_hub:
            raise InvalidName(f"push target must be hf.co/user/repo[:tag], got '{target}'")
        self.store.read_manifest(source)  # unknown model: ModelNotFound before any network
        return pull.run_events(lambda emit, cancel: push(self, source, dest, emit, private=private))

    # -- reading -----------------------------------------------------------------------------

    def stored_recipe(self, name: str | Name) -> Recipe:
        """The recipe as stored: sources pinned (commit, sha256) but not yet pointing at blobs."""
        canonical, manifest = self.store.read_manifest(_name(name))
        return self._stored(canonical, manifest)

    def _stored(self, canonical: Name, manifest: Manifest) -> Recipe:
        layer = manifest.layer(RECIPE_TYPE)
        if layer is None:
            raise RegistryError(
                f"'{canonical.display()}' has no recipe layer; it was not made by nanocommander"
            )
        text = self.store.read_blob(layer.digest).decode("utf-8")
        return Recipe.parse(text, file=f"{canonical.display()} (stored recipe)")

    def resolve(self, name: str | Name) -> Recipe:
        """The recipe with every member source pointing at its local blob, ready for the engine.

        Sources keep their hf/revision/sha256/ollama fields for display and push.
        Raises ModelNotFound, or RegistryError when a blob is missing (pull again).
        """
        canonical, manifest = self.store.read_manifest(_name(name))
        recipe = self._stored(canonical, manifest)
        for role in ROLES:
            spec = recipe.member(role)
            source = self._local(spec.source, manifest.layer(MODEL_TYPE, role), canonical)
            adapter = self._local(spec.adapter, manifest.layer(ADAPTER_TYPE, role), canonical)
            recipe = recipe.replace_member(role, dataclasses.replace(spec, source=source, adapter=adapter))
        return dataclasses.replace(recipe, name=canonical.display(), path=None)

    def _local(self, src: Source | None, layer, canonical: Name) -> Source | None:
        if src is None:
            return None
        if layer is None:
            raise RegistryError(f"manifest of '{canonical.display()}' lacks a member layer; pull it again")
        path = self.store.blob_path(layer.digest)
        if not path.exists():
            raise RegistryError(
                f"a blob of '{canonical.display()}' is missing; run `nanocommander pull "
                f"{canonical.display()}` to fetch it again"
            )
        return dataclasses.replace(src, path=path)

    def list(self) -> list[ModelEntry]:
        out = []
        for name, path in self.store.list():
            try:
                data = path.read_bytes()
                manifest = Manifest.from_json(data)
                config = json.loads(self.store.read_blob(manifest.config.digest))
            except (OSError, ValueError, KeyError, TypeError, RegistryError):
                continue  # a broken entry does not hide the others; `verify` reports it
            sizes = {x.digest: x.size for x in (manifest.config, *manifest.layers)}
            details = {
                "format": "gguf",
                "family": config.get("model_family"),
                "families": config.get("model_families"),
                "parameter_size": config.get("model_type"),
                "quantization_level": config.get("file_type"),
                "parent_model": "",
            }
            out.append(
                ModelEntry(
                    name,
                    hashlib.sha256(data).hexdigest(),
                    sum(sizes.values()),
                    datetime.fromtimestamp(path.stat().st_mtime, timezone.utc),
                    details,
                    family_id(manifest),
                )
            )
        return sorted(out, key=lambda e: e.modified_at, reverse=True)

    def show(self, name: str | Name, num_ctx: int | None = None) -> ModelDetails:
        canonical, manifest = self.store.read_manifest(_name(name))
        recipe = self.resolve(canonical)
        members = []
        for layer in manifest.layers:
            if layer.media_type in (MODEL_TYPE, ADAPTER_TYPE):
                members.append(
                    MemberDetails(
                        layer.name or "?",
                        "adapter" if layer.media_type == ADAPTER_TYPE else "model",
                        layer.source or "",
                        layer.digest,
                        read_gguf(self.store.blob_path(layer.digest)),
                    )
                )

        def text(media: str) -> str | None:
            layer = manifest.layer(media)
            return self.store.read_blob(layer.digest).decode("utf-8") if layer else None

        config = json.loads(self.store.read_blob(manifest.config.digest))
        layer = manifest.layer(RECIPE_TYPE)
        return ModelDetails(
            canonical,
            recipe,
            self.store.read_blob(layer.digest).decode() if layer else "",
            members,
            text(TEMPLATE_TYPE),
            text(SYSTEM_TYPE),
            text(LICENSE_TYPE),
            estimate_memory(recipe, num_ctx),
            config,
        )

    def estimate(
        self, name: str | Name, num_ctx: int | None = None, num_parallel: int | None = None
    ) -> MemoryEstimate:
        """Memory a stored model needs (weights + KV cache); the server refuses models that do not fit."""
        return estimate_memory(self.resolve(name), num_ctx, num_parallel)

    # -- editing -----------------------------------------------------------------------------

    def copy(self, source: str, dest: str) -> Name:
        """Make `dest` another name for `source` (same blobs); an existing `dest` is replaced."""
        src, dst = Name.parse(source), Name.parse(dest)
        _, manifest = self.store.read_manifest(src)
        return self.store.write_manifest(dst, manifest)

    def delete(self, name: str) -> tuple[Name, list[str]]:
        """Remove a model; returns its name and the blobs freed (those no other model uses)."""
        return self.store.delete(Name.parse(name))

    def verify(self, *, fix: bool = False) -> VerifyReport:
        """Re-hash every blob; with `fix`, delete the corrupt ones so the next pull fetches them again."""
        corrupt: list[tuple[str, str]] = []
        digests = self.store.blob_digests()
        for digest in digests:
            path = self.store.blob_path(digest)
            try:
                got = hash_file(path)
            except OSError as exc:
                corrupt.append((digest, f"unreadable: {exc.strerror or exc}"))
                continue
            if got != parse_digest(digest):
                corrupt.append((digest, f"content hashes to sha256:{got}"))
        bad = {d for d, _ in corrupt}
        affected = []
        for name, path in self.store.list():
            try:
                manifest = Manifest.from_json(path.read_bytes())
            except (OSError, ValueError, KeyError, TypeError, RegistryError):
                affected.append(name.display())
                continue
            missing = [
                x.digest for x in (manifest.config, *manifest.layers) if not self.store.has_blob(x.digest)
            ]
            if bad & {f"sha256:{d}" for d in manifest.digests()} or missing:
                affected.append(name.display())
        removed = []
        partial_dir = self.store.partial
        parts = [p for p in partial_dir.iterdir() if p.is_file()] if partial_dir.is_dir() else []
        partial_bytes = sum(p.stat().st_size for p in parts)
        stale = self.store.stale_temps()
        used = self.store.referenced()
        unused = [d for d in digests if parse_digest(d) not in used]
        if fix:
            for digest in sorted(bad):
                self.store.blob_path(digest).unlink(missing_ok=True)
                removed.append(digest)
            for path in stale:
                path.unlink(missing_ok=True)
            with self.store.lock("gc", blocking=False) as idle:  # never under a running pull
                if idle:
                    for p in parts:
                        p.unlink(missing_ok=True)
            self.store.gc()
        return VerifyReport(len(digests), corrupt, affected, removed, partial_bytes, len(stale), len(unused))


def _name(name: str | Name) -> Name:
    return name if isinstance(name, Name) else Name.parse(name)


def _is_recipe_file(ref: str | Path) -> bool:
    path = Path(ref)
    return (
        isinstance(ref, Path)
        or str(ref).lower().endswith((".yaml", ".yml"))
        or (
            "/" in str(ref)
            and path.is_file()
            and not str(ref).lower().startswith(("hf.co/", "huggingface.co/"))
        )
    )


def _skip_first(emit):
    """pull_recipe announces 'pulling manifest' itself; `_pull` already did before fetching the recipe."""
    state = {"first": True}

    def wrapped(event: Event) -> None:
        if state.pop("first", False) and event == {"status": "pulling manifest"}:
            return
        emit(event)

    return wrapped


__all__ = ["Registry", "ModelEntry", "ModelDetails", "MemberDetails", "VerifyReport", "Source"]
