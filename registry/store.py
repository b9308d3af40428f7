"""The content-addressed store: `blobs/sha256-<hex>` plus `manifests/<host>/<ns>/<model>/<tag>`.

Root: `$NANOCOMMANDER_MODELS`, else `~/.nanocommander/models` (read at call time).
Every write goes to a unique temp file in the target folder and is `os.replace`d
into place, so readers never see half a file. Two `flock` locks let a CLI and a
server share one store: `locks/manifests.lock` (exclusive, held for a moment around
manifest writes and deletes) and `locks/gc.lock` (held shared by every pull or create
for its whole run; garbage collection only runs when it can take it exclusively,
so it never deletes a blob that a pull has fetched but not yet listed).
Partial downloads live in `partial/` and survive until they complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanocommander.digest import hex_of
from nanocommander.errors import DigestMismatch, InvalidName, ModelNotFound, RegistryError
from nanocommander.registry.blobfiles import (
    BlobWriter,
    Progress,
    atomic_write,
    copy_checked,
    disk_error,
    hash_file,
)
from nanocommander.registry.name import Name

TEMP = re.compile(r"^\.(?:tmp|upload)-(\d+)-")  # temp files name their writer's pid
MANIFEST_TYPE = "application/vnd.nanocommander.manifest.v1+json"
CONFIG_TYPE = "application/vnd.nanocommander.config.v1+json"
RECIPE_TYPE = "application/vnd.nanocommander.recipe"
MODEL_TYPE = "application/vnd.ollama.image.model"  # one per member GGUF, `name` holds its role
ADAPTER_TYPE = "application/vnd.ollama.image.adapter"
PARAMS_TYPE = "application/vnd.ollama.image.params"
TEMPLATE_TYPE = "application/vnd.ollama.image.template"
SYSTEM_TYPE = "application/vnd.ollama.image.system"
LICENSE_TYPE = "application/vnd.ollama.image.license"
MESSAGES_TYPE = "application/vnd.ollama.image.messages"


def models_dir() -> Path:
    """The store root: $NANOCOMMANDER_MODELS, else ~/.nanocommander/models."""
    env = os.environ.get("NANOCOMMANDER_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".nanocommander" / "models"


def parse_digest(digest: str) -> str:
    """The 64 hex digits of `sha256:<hex>` (or `sha256-<hex>`); anything else is refused."""
    hexdigest = hex_of(digest)
    if hexdigest is None:
        raise RegistryError(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return hexdigest


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int
    name: str | None = None  # the member role for model/adapter layers
    source: str | None = None  # where it came from (hf.co/..., a path, ollama:...) -> manifest `from`

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.name:
            out["name"] = self.name
        if self.source:
            out["from"] = self.source
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layer:
        parse_digest(d["digest"])
        return cls(d["mediaType"], d["digest"], int(d["size"]), d.get("name"), d.get("from"))


@dataclass(frozen=True)
class Manifest:
    config: Layer
    layers: tuple[Layer, ...] = field(default_factory=tuple)

    def to_json(self) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        return cls(Layer.from_dict(doc["config"]), tuple(Layer.from_dict(x) for x in doc["layers"]))

    def digests(self) -> set[str]:
        return {parse_digest(x.digest) for x in (self.config, *self.layers)}

    def layer(self, media_type: str, name: str | None = None) -> Layer | None:
        for x in self.layers:
            if x.media_type == media_type and (name is None or x.name == name):
                return x
        return None


class Store:
    """Blobs and manifests under one root; every method is safe against a concurrent process."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else models_dir()
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.partial = self.root / "partial"
        self.locks = self.root / "locks"

    def ensure(self) -> None:
        for d in (self.blobs, self.manifests, self.partial, self.locks):
            d.mkdir(parents=True, exist_ok=True)

    # -- locks ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, *, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
        """Hold `locks/<name>.lock` (flock, so threads and processes both exclude each other).

        Yields False, holding nothing, when not `blocking` and someone else has it.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", name):
            raise RegistryError(f"bad lock name {name!r}")
        self.ensure()
        fd = os.open(self.locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- blobs ---------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / f"sha256-{parse_digest(digest)}"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def temp_path(self, kind: str = "tmp") -> Path:
        """A new temp file name in blobs/, named after this process (see stale_temps and TEMP)."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        return self.blobs / f".{kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}"

    def add_bytes(self, data: bytes, media_type: str, *, name: str | None = None) -> Layer:
        """Store a small blob (recipe, params, template...) and describe it as a layer."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            atomic_write(path, data)
        return Layer(media_type, digest, len(data), name=name)

    def import_file(
        self,
        src: Path,
        *,
        expected: str | None = None,
        progress: Progress | None = None,
        allow_symlink: bool = False,
        trusted: bool = False,
    ) -> tuple[str, int]:
        """Put a local file in the store without a second copy when possible; returns (digest, size).

        Hashes `src`, then hardlinks it into blobs/ (same filesystem), else symlinks it when
        `allow_symlink` (a file owned by a cache we trust to keep it), else copies it.
        `trusted` skips hashing: `expected` is already the content's digest (Ollama blob names).

        Raises:
            DigestMismatch: `expected` (64 hex) was given and the content differs; nothing is stored.
            RegistryError: the disk is full or the file cannot be read; nothing is stored.
        """
        src = Path(src)
        try:
            size = src.stat().st_size
            hexdigest = expected if trusted and expected else hash_file(src, progress)
        except OSError as exc:
            raise RegistryError(f"cannot read {src}: {exc.strerror or exc}") from exc
        if expected and expected != hexdigest:
            raise DigestMismatch(str(src), expected, hexdigest)
        digest = f"sha256:{hexdigest}"
        dest = self.blob_path(digest)
        if dest.exists():
            return digest, size
        tmp = self.temp_path()
        try:
            try:
                os.link(src, tmp)
            except OSError:
                if allow_symlink:
                    os.symlink(src.resolve(), tmp)
                else:
                    copy_checked(src, tmp, hexdigest)
            os.replace(tmp, dest)
        except OSError as exc:
            raise disk_error(exc, f"importing {src}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size

    def adopt(self, tmp: Path, hexdigest: str) -> Path:
        """Move a fully written and verified file into place as the blob of `hexdigest`."""
        dest = self.blob_path(f"sha256:{hexdigest}")
        os.replace(tmp, dest)
        return dest

    def writer(self, digest: str) -> BlobWriter:
        """A blob of a known digest written in pieces (an upload): see BlobWriter."""
        return BlobWriter(self.temp_path("upload"), parse_digest(digest), self.adopt)

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise RegistryError(f"blob {digest} is missing from the store; pull the model again") from None

    def blob_digests(self) -> list[str]:
        if not self.blobs.is_dir():
            return []
        return sorted(f"sha256:{p.name[7:]}" for p in self.blobs.iterdir() if hex_of(p.name))

    # -- manifests -----------------------------------------------------------------------------

    def find(self, name: Name) -> tuple[Name, Path] | None:
        """The stored manifest matching `name` case-insensitively, with its on-disk casing."""
        folder, found = self.manifests, []
        for part in name.parts():
            if not folder.is_dir():
                return None
            exact = folder / part
            if exact.exists():
                folder = exact
            else:
                match = sorted(p for p in folder.iterdir() if p.name.lower() == part.lower())
                if not match:
                    return None
                folder = match[0]
            found.append(folder.name)
        if not folder.is_file():
            return None
        return Name(*found), folder

    def read_manifest(self, name: Name) -> tuple[Name, Manifest]:
        """Raises ModelNotFound when there is no such model."""
        hit = self.find(name)
        if hit is None:
            raise ModelNotFound(name.display())
        canonical, path = hit
        try:
            return canonical, Manifest.from_json(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError, RegistryError) as exc:
            raise RegistryError(
                f"manifest of '{canonical.display()}' is unreadable ({exc}); pull it again"
            ) from exc

    def write_manifest(self, name: Name, manifest: Manifest) -> Name:
        """Write (or replace) the manifest; an existing model keeps its on-disk casing."""
        for layer in (manifest.config, *manifest.layers):
            if not self.has_blob(layer.digest):
                raise RegistryError(f"refusing to write a manifest that names a missing blob {layer.digest}")
        with self.lock("manifests"):
            hit = self.find(name)
            target = hit[1] if hit else self.manifests / name.path()
            atomic_write(target, manifest.to_json())
            return hit[0] if hit else name

    def list(self) -> list[tuple[Name, Path]]:
        out = []
        for path in sorted(self.manifests.glob("*/*/*/*")) if self.manifests.is_dir() else []:
            if not path.is_file() or path.name.startswith(".tmp-"):
                continue
            rel = path.relative_to(self.manifests).parts
            try:
                name = Name.parse(f"{rel[0]}/{rel[1]}/{rel[2]}:{rel[3]}")
            except InvalidName:
                continue  # not ours; leave it alone
            out.append((name, path))
        return out

    def delete(self, name: Name) -> tuple[Name, list[str]]:
        """Remove a manifest, then the blobs no other manifest uses; returns (name, removed digests)."""
        with self.lock("manifests"):
            hit = self.find(name)
            if hit is None:
                raise ModelNotFound(name.display())
            canonical, path = hit
            path.unlink()
            for parent in list(path.parents)[:3]:  # drop now-empty model/namespace/host folders
                with contextlib.suppress(OSError):
                    parent.rmdir()
        return canonical, self.gc()

    def referenced(self) -> set[str]:
        digests: set[str] = set()
        for _, path in self.list():
            try:
                digests |= Manifest.from_json(path.read_bytes()).digests()
            except (OSError, ValueError, KeyError, TypeError, RegistryError):
                continue
        return digests

    def discard(self, digests: set[str]) -> None:
        """Remove these blobs unless a manifest uses them (what a refused create had already fetched)."""
        with self.lock("manifests"):
            keep = self.referenced()
            for digest in digests:
                if parse_digest(digest) not in keep:
                    self.blob_path(digest).unlink(missing_ok=True)

    def gc(self) -> list[str]:
        """Delete unreferenced blobs, unless a pull or create is running (then they wait for the next gc).

        Temp files of killed processes (see stale_temps) go too.
        """
        removed: list[str] = []
        with self.lock("gc", blocking=False) as got:
            if not got:
                return removed
            with self.lock("manifests"):
                keep = self.referenced()
                for digest in self.blob_digests():
                    if parse_digest(digest) not in keep:
                        self.blob_path(digest).unlink(missing_ok=True)
                        removed.append(digest)
                for path in self.stale_temps():
                    path.unlink(missing_ok=True)
        return removed

    def stale_temps(self) -> list[Path]:
        """Temp files whose writer no longer runs: a process killed between writing a temp file and
        renaming it into place (kill -9, power loss) leaves one. A live writer's are never listed."""
        out = []
        for path in self.root.rglob(".*") if self.root.is_dir() else ():
            match = TEMP.match(path.name)
            if match and (path.is_file() or path.is_symlink()) and not _alive(int(match.group(1))):
                out.append(path)
        return out


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
