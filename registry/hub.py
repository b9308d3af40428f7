"""Hugging Face Hub access through the real `huggingface_hub` client.

Settings are read from the environment at call time (HF_ENDPOINT, HF_TOKEN,
HF_HUB_OFFLINE, HF_HUB_CACHE / HF_HOME) and passed explicitly, because
huggingface_hub freezes its own copies at import time.

Member GGUFs are not fetched with `hf_hub_download`: huggingface_hub 2.x deletes a
partial file when a download fails (PR #4228), so an interrupted pull would start
over. Instead this module asks the Hub for the file's metadata
(`get_hf_file_metadata`: commit, ETag, size, URL) and streams it through
huggingface_hub's own HTTP session (`get_session`, same auth headers, proxies and
transport hooks) into a `partial/` file that survives failures; the next pull
continues it with an HTTP Range request. Files already in the HF
cache are linked, not copied. Small text files (recipes) do use `hf_hub_download`.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from nanocommander.digest import hex_of
from nanocommander.errors import RegistryError
from nanocommander.registry.blobfiles import disk_error

TRUE = ("1", "true", "yes", "on")
QUANT = re.compile(r"(?i)(?:^|[-_.])((?:I?Q\d[A-Z0-9_]*|F16|BF16|F32))(?:[-_.]|$)")
PREFERRED_QUANTS = ("Q4_K_M", "Q4_K_S", "Q4_0", "Q5_K_M", "Q8_0", "F16", "BF16")


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    token: str | None
    offline: bool
    cache_dir: Path

    @classmethod
    def from_env(cls) -> HubSettings:
        hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or hf_home / "hub"
        return cls(
            endpoint=(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"),
            token=os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None,
            offline=os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE,
            cache_dir=Path(cache).expanduser(),
        )

    def api(self) -> Any:

        return HfApi(endpoint=self.endpoint, token=self.token)

    def require_online(self, what: str) -> None:
        if self.offline:
            raise RegistryError(
                f"HF_HUB_OFFLINE is set, so {what} cannot be fetched from the Hub and is not cached"
            )


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    filename: str
    commit: str
    etag: str
    size: int | None
    url: str

    @property
    def sha256(self) -> str | None:
        """The content sha256 when the Hub tells it (LFS files: the ETag is the sha256)."""
        return hex_of(self.etag, bare=True)


ANOTHER_RECIPE = (
    "the recipe may be out of date: pull another one with `nanocommander pull OTHER.yaml` "
    "(members with hf:/file: or local path:) or `nanocommander pull hf.co/USER/REPO:Q4_K_M`"
)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The connection and timeout errors of the HTTP clients huggingface_hub may use, and the OS's."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module in ("httpx2", "httpx", "requests"):
        try:
            lib = __import__(module)
        except ImportError:
            continue
        for name in ("ConnectError", "TimeoutException", "ConnectTimeout", "ConnectionError", "Timeout"):
            cls = getattr(lib, name, None) or getattr(getattr(lib, "exceptions", None), name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(found)


def unreachable(exc: BaseException) -> str | None:
    """Why the Hub could not be reached at all (refused, no DNS, timed out), or None for any other error."""
    kinds, seen = _transport_errors(), set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kinds):
            reason = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the client wrote
            return reason[:160]
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def hub_error(
    exc: BaseException,
    what: str,
    *,
    repo: str | None = None,
    file: str | None = None,
    revision: str | None = None,
) -> RegistryError:
    """A one-line RegistryError that says what failed and why, for any huggingface_hub or network error.

    A repository, revision or file the Hub does not have (its 404s) names them and suggests another
    recipe; no network at all says so, with the offline switch, instead of a client's traceback text."""

    at = f" at revision {revision}" if revision and revision != "main" else ""
    target = f"{file} in {repo}" if repo and file else repo or what
    if isinstance(exc, GatedRepoError):
        return RegistryError(f"{what}: the repo is gated; accept its terms on the Hub and set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        if repo:
            return RegistryError(
                f"{what}: repository not found on the Hub: {repo} (private repos need HF_TOKEN); {ANOTHER_RECIPE}"
            )
        return RegistryError(f"{what}: repository not found (private repos need HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        if repo:
            return RegistryError(
                f"{what}: revision not found on the Hub: {revision} of {repo}; {ANOTHER_RECIPE}"
            )
        return RegistryError(f"{what}: revision not found")
    if isinstance(exc, EntryNotFoundError):
        if repo:
            return RegistryError(f"{what}: file not found on the Hub: {target}{at}; {ANOTHER_RECIPE}")
        return RegistryError(f"{what}: file not found in the repo")
    if (reason := unreachable(exc)) is not None:
        endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        return RegistryError(
            f"no network: cannot reach the Hub at {endpoint} for {target} ({reason}); "
            "connect, or set HF_HUB_OFFLINE=1 to use files already in the Hugging Face cache"
        )
    return RegistryError(f"{what} failed: {type(exc).__name__}: {' '.join(str(exc).split())}")


def repo_files(settings: HubSettings, repo: str, revision: str | None) -> tuple[list[str], str]:
    """(file names, commit sha) of a model repo at `revision`."""
    settings.require_online(f"the file list of {repo}")
    try:
        info = settings.api().model_info(repo, revision=revision)
    except Exception as exc:  # noqa: BLE001 - every client error becomes one RegistryError
        raise hub_error(exc, f"listing {repo}", repo=repo, revision=revision) from exc
    return [s.rfilename for s in info.siblings or []], str(info.sha)


def pick_quant(files: list[str], tag: str, repo: str) -> str:
    """The GGUF in `files` matching an Ollama-style quant tag (Q4_K_M, case-insensitive) or file name.

    `latest` prefers Q4_K_M, then other common quants, then the only GGUF there is.
    """
    ggufs = [f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower()]
    if not ggufs:
        raise RegistryError(f"{repo} has no .gguf files")
    by_name = [f for f in ggufs if f.lower() == tag.lower() or f.lower().rsplit("/", 1)[-1] == tag.lower()]
    if by_name:
        return by_name[0]
    quants: dict[str, list[str]] = {}
    for f in ggufs:
        m = QUANT.search(f.rsplit("/", 1)[-1][: -len(".gguf")])
        quants.setdefault(m.group(1).upper() if m else "", []).append(f)
    wanted = [tag.upper()] if tag.lower() != "latest" else [*PREFERRED_QUANTS, *sorted(quants)]
    for q in wanted:
        hits = sorted(quants.get(q, []))
        if len(hits) > 1 and any("-of-" in h for h in hits):
            raise RegistryError(f"{repo}:{tag} is a sharded GGUF ({len(hits)} files), which is not supported")
        if hits:
            return hits[0]
    if tag.lower() == "latest" and len(ggufs) == 1:
        return ggufs[0]
    have = ", ".join(sorted(q for q in quants if q)) or ", ".join(ggufs)
    raise RegistryError(f"{repo} has no GGUF for tag '{tag}'; available: {have}")


def remote_file(settings: HubSettings, repo: str, filename: str, revision: str | None) -> RemoteFile:
    """HEAD the file on the Hub: commit, ETag (the sha256 for LFS files), size and download URL."""

    settings.require_online(f"{repo}/{filename}")
    url = hf_hub_url(repo, filename, revision=revision or "main", endpoint=settings.endpoint)
    try:
        meta = get_hf_file_metadata(url, token=settings.token, endpoint=settings.endpoint)
    except Exception as exc:  # noqa: BLE001
        raise hub_error(
            exc, f"looking up {repo}/{filename}", repo=repo, file=filename, revision=revision
        ) from exc
    if not meta.commit_hash or not meta.etag:
        raise RegistryError(f"the Hub gave no commit or ETag for {repo}/{filename}")
    return RemoteFile(repo, filename, meta.commit_hash, meta.etag, meta.size, meta.location)


def cached_file(settings: HubSettings, repo: str, filename: str, revision: str | None) -> Path | None:
    """The file's blob in the local HF cache, if huggingface_hub has already downloaded it."""

    hit = try_to_load_from_cache(repo, filename, cache_dir=settings.cache_dir, revision=revision or "main")
    if isinstance(hit, str) and os.path.isfile(hit):
        return Path(os.path.realpath(hit))
    return None


def download_text(settings: HubSettings, repo: str, filename: str, revision: str | None) -> str:
    """A small text file from the Hub via hf_hub_download (cached, offline-aware)."""

    try:
        path = hf_hub_download(
            repo,
            filename,
            revision=revision,
            cache_dir=settings.cache_dir,
            endpoint=settings.endpoint,
            token=settings.token,
            local_files_only=settings.offline,
        )
        return Path(path).read_text(encoding="utf-8")
    except Exception as exc:  # noqa: BLE001
        raise hub_error(
            exc, f"downloading {repo}/{filename}", repo=repo, file=filename, revision=revision
        ) from exc


class Cancelled(Exception):
    """The consumer of a pull went away; the partial file is kept for the next pull."""


RETRIES = 3  # connection drops in a row, without any new byte, before a pull gives up


def fetch_to_partial(
    settings: HubSettings,
    remote: RemoteFile,
    partial: Path,
    *,
    progress=None,
    cancel: threading.Event | None = None,
) -> None:
    """Download `remote` into `partial`, continuing from the bytes already there.

    Every byte received is written at once (huggingface_hub's http_get buffers 10 MB
    chunks and loses them on a drop), so a dropped connection is resumed with a Range
    request right away, and a pull that gives up leaves `partial` for the next one.

    Raises:
        RegistryError: the transfer failed; `partial` keeps what arrived so the next call resumes.
    Long on purpose: one resumable HTTP download with its retry, range and progress handling in one place,
    so every exit path closes the partial file the same way.
    """
    settings.require_online(f"{remote.repo}/{remote.filename}")
    try:
        import httpx2 as httpx  # what huggingface_hub 2.x uses
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx  # type: ignore[no-redef]

    headers = build_hf_headers(token=settings.token)
    headers["Accept-Encoding"] = "identity"  # byte offsets must be offsets into the file itself
    failures = 0
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        if remote.size is not None and have > remote.size:  # not the same file any more
            partial.unlink()
            have = 0
        if remote.size is not None and have == remote.size:
            return
        start = have
        try:
            with open(partial, "ab") as f:
                ranged = {**headers, "Range": f"bytes={have}-"} if have else headers
                with get_session().stream(
                    "GET",
                    remote.url,
                    headers=ranged,
                    follow_redirects=True,
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    hf_raise_for_status(response)
                    if have and response.status_code != 206:  # the server ignored Range: start over
                        f.truncate(0)
                        have = 0
                    for chunk in response.iter_bytes():
                        if cancel is not None and cancel.is_set():
                            raise Cancelled()
                        f.write(chunk)
                        have += len(chunk)
                        if progress:
                            progress(have)
                f.flush()
                os.fsync(f.fileno())
            if remote.size is None or have == remote.size:
                return
            raise RegistryError(
                f"{remote.repo}/{remote.filename}: the Hub sent {have} of {remote.size} bytes"
            )
        except (Cancelled, RegistryError):
            raise
        except httpx.TransportError as exc:
            got = partial.stat().st_size if partial.exists() else 0
            failures = 0 if got > start else failures + 1
            if failures >= RETRIES:
                raise _interrupted(remote, partial, exc) from exc
            time.sleep(0.2 * (failures + 1))
        except Exception as exc:  # noqa: BLE001 - HTTP errors from the Hub, local disk errors
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_error(exc, f"downloading {remote.repo}/{remote.filename}") from exc
            raise _interrupted(remote, partial, exc) from exc


def _interrupted(remote: RemoteFile, partial: Path, exc: BaseException) -> RegistryError:
    got = partial.stat().st_size if partial.exists() else 0
    total = f" of {remote.size}" if remote.size else ""
    return RegistryError(
        f"download of {remote.repo}/{remote.filename} interrupted at {got}{total} bytes "
        f"({type(exc).__name__}: {exc}); pull again to resume"
    )
