"""Pulling and creating: fetch a recipe's members into the store, then write its manifest.

Everything reports through Ollama-shaped progress events (dicts), the same stream
the CLI draws with tqdm and the server sends for /api/pull:

    {"status": "pulling manifest"}
    {"status": "pulling 1a2b3c4d5e6f", "digest": "sha256:...", "total": N, "completed": M}
    {"status": "verifying sha256 digest"}
    {"status": "writing manifest"}
    {"status": "success"}

The manifest is written last, only after every blob is in place and verified, so a
failed pull (bad digest, disk full, network) registers nothing. The whole pull holds
the store's `gc` lock shared, so a concurrent `rm` never collects its fresh blobs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nanocommander.engine.request.recipe import ROLES, Recipe, Source
from nanocommander.errors import AdapterMismatch, DigestMismatch, RecipeError, RegistryError
from nanocommander.gguf_file import read_gguf
from nanocommander.registry import hub
from nanocommander.registry.family import check_adapter, check_recipe_adapter
from nanocommander.registry.name import Name
from nanocommander.registry.ollama_local import ollama_blob
from nanocommander.registry.store import (
    ADAPTER_TYPE,
    CONFIG_TYPE,
    LICENSE_TYPE,
    MESSAGES_TYPE,
    MODEL_TYPE,
    PARAMS_TYPE,
    RECIPE_TYPE,
    SYSTEM_TYPE,
    TEMPLATE_TYPE,
    Layer,
    Manifest,
    Store,
    atomic_write,
    disk_error,
    hash_file,
)

Event = dict[str, Any]
Emit = Callable[[Event], None]


@dataclass(frozen=True)
class Fetched:
    digest: str  # sha256:<hex>
    size: int
    source: Source  # the source pinned to what was fetched (commit, sha256), kept in the stored recipe
    origin: str  # human-readable provenance, the layer's `from`


def run_events(work: Callable[[Emit, threading.Event], None]) -> Iterator[Event]:
    """Run `work(emit, cancel)` on a thread and yield what it emits; its exception re-raises here.

    Closing the iterator early (a client went away) sets `cancel`, which stops a download
    at its next chunk and keeps the partial file for the next pull.
    """
    q: queue.Queue = queue.Queue()
    cancel, done = threading.Event(), object()

    def target() -> None:
        try:
            work(q.put, cancel)
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread
            q.put(_Failure(exc))

    thread = threading.Thread(target=target, name="nanocommander-pull", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        cancel.set()
        thread.join()


@dataclass
class _Failure:
    exc: BaseException


class Fetcher:
    """Brings one member source into the store and says what it pinned."""

    def __init__(self, store: Store, settings: hub.HubSettings, emit: Emit, cancel: threading.Event):
        self.store, self.settings, self.emit, self.cancel = store, settings, emit, cancel

    def fetch(self, src: Source) -> Fetched:
        if self.cancel.is_set():
            raise hub.Cancelled()
        if src.sha256 and self.store.has_blob(f"sha256:{src.sha256}"):  # pinned and present: nothing to do
            digest = f"sha256:{src.sha256}"
            size = self.store.blob_path(digest).stat().st_size
            self.emit(_progress_event(_pulling(digest), digest, size, size))
            return Fetched(digest, size, src, _origin(src))
        if src.kind == "path":
            return self.local(src)
        if src.kind == "ollama":
            return self.ollama(src)
        return self.hf(src)

    def _progress(self, status: str, digest: str | None, total: int | None) -> Callable[[int], None]:
        last = [0.0]

        def report(done: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.05 or (total is not None and done >= total):
                last[0] = now
                self.emit(_progress_event(status, digest, total, done))

        return report

    def local(self, src: Source) -> Fetched:
        path = Path(src.path)  # type: ignore[arg-type]
        if not path.is_file():
            raise RegistryError(f"member file not found: {path}")
        size = path.stat().st_size
        self.emit(_progress_event(f"importing {path.name}", None, size, 0))
        digest, size = self.store.import_file(
            path, expected=src.sha256, progress=self._progress(f"importing {path.name}", None, size)
        )
        self.emit({"status": f"using layer {digest}"})
        return Fetched(digest, size, Source(path=path, sha256=digest[7:]), str(path))

    def ollama(self, src: Source) -> Fetched:
        path, hexdigest = ollama_blob(src.ollama or "")
        if src.sha256 and src.sha256 != hexdigest:
            raise DigestMismatch(f"ollama:{src.ollama}", src.sha256, hexdigest)
        digest, size = self.store.import_file(path, expected=hexdigest, trusted=True, allow_symlink=True)
        self.emit(_progress_event(_pulling(digest), digest, size, size))
        return Fetched(digest, size, Source(ollama=src.ollama, sha256=hexdigest), f"ollama:{src.ollama}")

    def hf(self, src: Source) -> Fetched:
        repo, file, want = src.hf or "", src.file or "", src.sha256
        if self.settings.offline:
            return self.from_hf_cache(src)
        revision = src.revision
        if not file.lower().endswith(".gguf"):  # an Ollama-style quant tag such as Q4_K_M
            files, revision = hub.repo_files(self.settings, repo, revision)
            file = hub.pick_quant(files, file, repo)
        remote = hub.remote_file(self.settings, repo, file, revision)
        if want and remote.sha256 and remote.sha256 != want:
            raise DigestMismatch(f"hf.co/{repo}/{file}", want, remote.sha256)
        known = want or remote.sha256
        key = hashlib.sha256(f"{repo}\n{remote.commit}\n{file}\n{remote.etag}".encode()).hexdigest()[:32]
        ref = self.store.root / "refs" / key
        with self.store.lock(f"dl-{key}"):  # a second pull of the same file waits here, then reuses it
            hexdigest = known or (ref.read_text().strip() if ref.is_file() else None)
            if hexdigest and self.store.has_blob(f"sha256:{hexdigest}"):
                size = self.store.blob_path(f"sha256:{hexdigest}").stat().st_size
                self.emit(_progress_event(_pulling(f"sha256:{hexdigest}"), f"sha256:{hexdigest}", size, size))
            else:
                hexdigest = self.download(remote, key, known)
            atomic_write(ref, hexdigest.encode())
        digest = f"sha256:{hexdigest}"
        pinned = Source(hf=repo, file=file, revision=remote.commit, sha256=hexdigest)
        return Fetched(digest, self.store.blob_path(digest).stat().st_size, pinned, _origin(pinned))

    def download(self, remote: hub.RemoteFile, key: str, known: str | None) -> str:
        """Link the file from the HF cache, or download (resuming) and verify it; returns its sha256."""
        digest = f"sha256:{known}" if known else None
        status = _pulling(digest) if digest else f"pulling {remote.filename}"
        cached = hub.cached_file(self.settings, remote.repo, remote.filename, remote.commit)
        if cached is not None:
            digest, size = self.store.import_file(cached, expected=known, allow_symlink=True)
            self.emit(_progress_event(status, digest, size, size))
            return digest[7:]
        partial = self.store.partial / key
        self.store.ensure()
        have = partial.stat().st_size if partial.exists() else 0
        self.emit(_progress_event(status, digest, remote.size, have))
        hub.fetch_to_partial(
            self.settings,
            remote,
            partial,
            progress=self._progress(status, digest, remote.size),
            cancel=self.cancel,
        )
        self.emit({"status": "verifying sha256 digest"})
        hexdigest = hash_file(partial)
        if known and hexdigest != known:
            partial.unlink(missing_ok=True)  # a bad file is never kept, not even to resume
            raise DigestMismatch(f"hf.co/{remote.repo}/{remote.filename}", known, hexdigest)
        try:
            self.store.adopt(partial, hexdigest)
        except OSError as exc:
            raise disk_error(exc, f"storing {remote.filename}") from exc
        return hexdigest

    def from_hf_cache(self, src: Source) -> Fetched:
        file = src.file or ""
        if not file.lower().endswith(".gguf"):
            raise RegistryError(
                f"HF_HUB_OFFLINE is set: give hf.co/{src.hf} a file: name, not the tag '{file}'"
            )
        cached = hub.cached_file(self.settings, src.hf or "", file, src.revision)
        if cached is None:
            self.settings.require_online(f"{src.hf}/{file}")
        digest, size = self.store.import_file(cached, expected=src.sha256, allow_symlink=True)  # type: ignore[arg-type]
        self.emit(_progress_event(_pulling(digest), digest, size, size))
        return Fetched(digest, size, dataclasses.replace(src, sha256=digest[7:]), _origin(src))


def pull_recipe(
    store: Store, settings: hub.HubSettings, recipe: Recipe, name: Name, emit: Emit, cancel: threading.Event
) -> Name:
    """Fetch every member of `recipe` and register it as `name`; returns the name as stored."""
    emit({"status": "pulling manifest"})
    store.ensure()
    with store.lock("gc", shared=True):
        checked = check_recipe_adapter(store, recipe)  # a misfit adapter is refused before any write
        before = set(store.blob_digests())
        fetcher = Fetcher(store, settings, emit, cancel)
        seen: dict[Source, Fetched] = {}
        fetched: dict[str, Fetched] = {}
        for role in ROLES:
            spec = recipe.member(role)
            for kind, src in (("model", spec.source), ("adapter", spec.adapter)):
                if src is None:
                    continue
                if src not in seen:  # large == base (same source) is fetched once
                    seen[src] = fetcher.fetch(src)
                fetched[f"{role}.{kind}"] = seen[src]
        if not checked and "tuned.adapter" in fetched:
            base, adapter = fetched["base.model"], fetched["tuned.adapter"]
            try:
                check_adapter(
                    store.blob_path(base.digest),
                    store.blob_path(adapter.digest),
                    base_label=base.origin,
                    adapter_label=adapter.origin,
                )
            except AdapterMismatch:
                store.discard({f.digest for f in fetched.values()} - before)
                raise
        stored = pinned_recipe(recipe, fetched)
        manifest = build_manifest(store, stored, fetched)
        emit({"status": "writing manifest"})
        final = store.write_manifest(name, manifest)
    emit({"status": "success"})
    return final


def pinned_recipe(recipe: Recipe, fetched: dict[str, Fetched]) -> Recipe:
    """The recipe as stored: each source pinned to the commit and sha256 actually fetched."""
    for role in ROLES:
        spec = recipe.member(role)
        model, adapter = fetched.get(f"{role}.model"), fetched.get(f"{role}.adapter")
        recipe = recipe.replace_member(
            role,
            dataclasses.replace(
                spec, source=model.source if model else None, adapter=adapter.source if adapter else None
            ),
        )
    return dataclasses.replace(recipe, path=None)


def build_manifest(store: Store, recipe: Recipe, fetched: dict[str, Fetched]) -> Manifest:
    """Layers for the recipe, each member and adapter, params, template, system, license and messages."""
    layers = [store.add_bytes(recipe.dump().encode(), RECIPE_TYPE)]
    infos = {}
    for role in ROLES:
        for kind, media in (("model", MODEL_TYPE), ("adapter", ADAPTER_TYPE)):
            f = fetched.get(f"{role}.{kind}")
            if f is None:
                continue
            try:
                info = read_gguf(store.blob_path(f.digest))
            except ValueError:
                raise RegistryError(f"member {role} ({f.origin}) is not a GGUF file") from None
            if (info.kind == "adapter") != (kind == "adapter"):
                raise RegistryError(
                    f"member {role} ({f.origin}) is a {info.kind} GGUF but is used as a {kind}"
                )
            infos[f"{role}.{kind}"] = info
            layers.append(Layer(media, f.digest, f.size, name=role, source=f.origin))
    if recipe.parameters:
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in recipe.parameters.items()}
        layers.append(store.add_bytes(json.dumps(params, sort_keys=True).encode(), PARAMS_TYPE))
    if recipe.template in ROLES:
        member = "base" if recipe.template == "tuned" and recipe.tuned.is_adapter else recipe.template
        template = infos[f"{member}.model"].chat_template
    else:
        template = recipe.template
    for text, media in (
        (template, TEMPLATE_TYPE),
        (recipe.system, SYSTEM_TYPE),
        (recipe.license, LICENSE_TYPE),
    ):
        if text:
            layers.append(store.add_bytes(text.encode(), media))
    if recipe.messages:
        layers.append(store.add_bytes(json.dumps([dict(m) for m in recipe.messages]).encode(), MESSAGES_TYPE))
    large = infos["large.model"]
    config = {
        "model_format": "gguf",
        "model_family": large.architecture,
        "model_families": sorted({i.architecture for i in infos.values() if i.architecture}),
        "model_type": large.parameter_size,
        "file_type": large.quantization,
        "context_length": large.context_length,
        "alpha": recipe.alpha,
        "members": {k.split(".")[0] if k.endswith(".model") else k: i.to_dict() for k, i in infos.items()},
    }
    config_layer = store.add_bytes(json.dumps(config, sort_keys=True).encode(), CONFIG_TYPE)
    return Manifest(config_layer, tuple(layers))


def hub_recipe(settings: hub.HubSettings, name: Name) -> Recipe:
    """The shared recipe of `hf.co/user/repo[:tag]`: `<tag>.yaml`, or `nanocommander.yaml` for latest.

    Relative `path:` members in it name files of the same repo, pinned to the commit read.
    """
    repo, tag = name.repo_id, name.tag
    candidates = (
        [f"{tag}.yaml", f"{tag}.yml"]
        if tag.lower() != "latest"
        else ["nanocommander.yaml", "nanocommander.yml", "latest.yaml"]
    )
    if settings.offline:
        for candidate in candidates:
            cached = hub.cached_file(settings, repo, candidate, "main")
            if cached is not None:
                return parse_hub_recipe(cached.read_text(encoding="utf-8"), repo, "main", candidate)
        settings.require_online(f"a recipe of {repo}")
    files, commit = hub.repo_files(settings, repo, None)
    recipes = [f for f in files if "/" not in f and f.lower().endswith((".yaml", ".yml"))]
    lower = {f.lower(): f for f in recipes}
    chosen = next((lower[c.lower()] for c in candidates if c.lower() in lower), None)
    if chosen is None and tag.lower() == "latest" and len(recipes) == 1:
        chosen = recipes[0]
    if chosen is None:
        if not recipes:
            raise RegistryError(
                f"hf.co/{repo} has no nanocommander recipe (*.yaml); to use one of its GGUFs, "
                f"name it in a recipe member: hf: {repo}, file: <name>.gguf"
            )
        tags = ", ".join(sorted(f.rsplit(".", 1)[0] for f in recipes))
        raise RegistryError(f"hf.co/{repo} has no recipe for tag '{tag}'; available tags: {tags}")
    return parse_hub_recipe(hub.download_text(settings, repo, chosen, commit), repo, commit, chosen)


def parse_hub_recipe(text: str, repo: str, commit: str, filename: str) -> Recipe:
    where = f"hf.co/{repo}/{filename}"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None  # Recipe.parse reports the line
    if isinstance(doc, dict) and isinstance(doc.get("members"), dict):
        for role, spec in list(doc["members"].items()):
            doc["members"][role] = _repo_member(spec, repo, commit, where)
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return Recipe.parse(text, file=where)


def _repo_member(spec: Any, repo: str, commit: str, where: str) -> Any:
    """Turn `path: x.gguf` (also in `adapter:`) into `hf: repo, file: x.gguf, revision: commit`."""
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict):
        return spec
    spec = dict(spec)
    if isinstance(spec.get("adapter"), (str, dict)):
        spec["adapter"] = _repo_member(spec["adapter"], repo, commit, where)
    path = spec.get("path")
    if isinstance(path, str):
        if path.startswith(("/", "~")) or ".." in Path(path).parts:
            raise RecipeError(
                f"a shared recipe may only name files inside its repo, not '{path}'", file=where
            )
        spec.pop("path")
        spec = {"hf": repo, "file": path, "revision": commit, **spec}
    return spec


def _pulling(digest: str) -> str:
    return f"pulling {digest.removeprefix('sha256:')[:12]}"


def _progress_event(status: str, digest: str | None, total: int | None, completed: int) -> Event:
    event: Event = {"status": status}
    if digest:
        event["digest"] = digest
    if total is not None:
        event["total"] = total
    event["completed"] = completed
    return event


def _origin(src: Source) -> str:
    if src.kind == "path":
        return str(src.path)
    if src.kind == "ollama":
        return f"ollama:{src.ollama}"
    rev = f"@{src.revision}" if src.revision else ""
    return f"hf.co/{src.hf}{rev}/{src.file}"
