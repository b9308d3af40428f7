"""The store's file writing: hashing while copying, atomic writes, uploads checked before they land.

Every path a blob takes into the store (an import, a small layer, an upload, a download) writes a
temp file named after its writer's pid and renames it into place only once its content is known to be
right; `Store.stale_temps` finds the temp files of writers that died.
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from nanocommander.errors import DigestMismatch, RegistryError

CHUNK = 1 << 20
Progress = Callable[[int], None]  # called with the bytes handled so far


class BlobWriter:
    """A blob arriving in pieces: hashed on the way, put in place only when the digest checks.

    Used as a context manager; leaving it without `commit()` (an error, a client that went
    away) removes the temp file, so a failed upload leaves nothing in the store.
    """

    def __init__(self, tmp: Path, hexdigest: str, adopt: Callable[[Path, str], Path]):
        self.tmp, self.expected, self._adopt = tmp, hexdigest, adopt
        self._file = open(self.tmp, "wb")  # noqa: SIM115 (closed in commit or __exit__)
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        try:
            self._file.write(data)
        except OSError as exc:
            raise disk_error(exc, "writing an upload") from exc

    def commit(self) -> Path:
        """Check the digest and move the blob into place.

        Raises:
            DigestMismatch: the bytes written are not the digest's; nothing is stored.
        """
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self._hash.hexdigest() != self.expected:
            raise DigestMismatch("upload", self.expected, self._hash.hexdigest())
        return self._adopt(self.tmp, self.expected)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def hash_file(path: Path, progress: Progress | None = None) -> str:
    h, done = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done)
    return h.hexdigest()


def copy_checked(src: Path, dest: Path, hexdigest: str) -> None:
    """Copy src to dest, re-hashing on the way so a file changed meanwhile is caught."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    if h.hexdigest() != hexdigest:
        raise DigestMismatch(str(src), hexdigest, h.hexdigest())


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a unique temp file next to `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise disk_error(exc, f"writing {path.name}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def disk_error(exc: OSError, what: str) -> RegistryError:
    """A clear RegistryError for an OSError, with a hint for the common disk-full case."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RegistryError(
            f"disk full while {what}: free some space and run the command again "
            "(nothing was registered; a partial download resumes next time)"
        )
    return RegistryError(f"{what} failed: {exc.strerror or exc}")
