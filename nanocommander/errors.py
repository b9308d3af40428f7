"""One exception hierarchy for the whole project.

Each error also subclasses the builtin it resembles, so callers that only know
Python's builtins still catch it. Protocol modules map these classes (never
their message text) onto their own status codes and error envelopes.
"""

from __future__ import annotations

import logging
import threading

_WARNED: set[str] = set()  # reasons already logged (clients poll the model lists every few seconds)
_WARNED_LOCK = threading.Lock()


def warn_once(log: logging.Logger, message: str) -> None:
    """Log a problem that a listing skips or flags once per process, not on every poll."""
    with _WARNED_LOCK:
        if message in _WARNED:
            return
        if len(_WARNED) > 1000:
            _WARNED.clear()
        _WARNED.add(message)
    log.warning("%s", message)


class NanoCommanderError(Exception):
    """Base of every error NanoCommander raises on purpose."""


class RecipeError(NanoCommanderError, ValueError):
    """A recipe file is malformed; the message names file, line and key."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, key: str | None = None
    ):
        self.file, self.line, self.key, self.detail = file, line, key, message
        where = ":".join(str(p) for p in (file, line) if p is not None)
        prefix = f"{where}: " if where else ""
        keypart = f"{key}: " if key else ""
        super().__init__(f"{prefix}{keypart}{message}")


class InvalidName(NanoCommanderError, ValueError):
    """A model name breaks the Name grammar (see registry.name)."""


class ModelNotFound(NanoCommanderError, LookupError):
    """No model of that name in the store or among served recipes."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"model '{name}' not found, try pulling it first")


class TokenizerMismatch(NanoCommanderError, ValueError):
    """Members do not share one vocabulary; proxy-tuning needs identical token ids."""


class ContextOverflow(NanoCommanderError, ValueError):
    """Prompt plus num_predict does not fit in a member's context."""

    def __init__(self, n_prompt: int, n_predict: int, n_ctx: int):
        self.n_prompt, self.n_predict, self.n_ctx = n_prompt, n_predict, n_ctx
        super().__init__(
            f"prompt of {n_prompt} tokens plus num_predict {n_predict} exceeds the context size {n_ctx}; "
            "shorten the prompt, lower num_predict or raise num_ctx"
        )


class InvalidRequest(NanoCommanderError, ValueError):
    """A request field has the wrong type or an impossible value."""


class ModelLoadError(NanoCommanderError, RuntimeError):
    """llama.cpp could not load a member or adapter file."""


class RpcServerLost(NanoCommanderError, RuntimeError):
    """An RPC server holding a member's layers went away during a request; the model reloads next time.

    Not a ConnectionError: the streaming layer reads those as the client having left.
    """


class InsufficientMemory(NanoCommanderError, MemoryError):
    """A model's memory estimate exceeds what is free."""


class ServerBusy(NanoCommanderError, RuntimeError):
    """The model's queue is full (NANOCOMMANDER_MAX_QUEUE)."""


class DigestMismatch(NanoCommanderError, ValueError):
    """A downloaded or uploaded file's sha256 differs from the expected one."""

    def __init__(self, what: str, expected: str, got: str):
        self.expected, self.got = expected, got
        super().__init__(f"digest mismatch for {what}, expected sha256:{expected}, got sha256:{got}")


class RegistryError(NanoCommanderError, RuntimeError):
    """A pull, push or store operation failed (network, disk, Hub)."""


class ReferenceNotFound(RegistryError, LookupError):
    """A pull names nothing it can fetch: no recipe file, no Hub name, no stored model (a 404)."""


class AdapterMismatch(NanoCommanderError, ValueError):
    """A LoRA adapter does not fit the base it is meant for (architecture, tensor names or shapes)."""


class RunnerLost(NanoCommanderError, RuntimeError):
    """A model's runner process died or stopped answering; the model is loaded again on its next request.

    Not a ConnectionError: the streaming layer reads those as the client having left.
    """
