"""One member of the composite: a llama.cpp context over a (possibly shared) model.

Evaluation keeps the longest common prefix with what the context already holds
and evaluates only the rest, so a chat's turn 10 costs only its new tokens. The
last position's logits are exposed as a numpy view over llama.cpp's own buffer
(no per-step copy into Python); it is valid until the next `eval`.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals

from nanocommander.errors import ModelLoadError

_backend_ready = False
_backend_lock = threading.Lock()


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            from nanocommander.engine import llamalog

            llamalog.install()  # llama.cpp's log only with --verbose or NANOCOMMANDER_DEBUG
            llama_cpp.llama_backend_init()
            _backend_ready = True


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class LoadedModel:
    """A llama_model loaded once and shared by every context (and composite) that uses the file."""

    def __init__(self, path: Path, gpu_layers: int = 0):
        _init_backend()
        self.path = Path(path)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if gpu_layers < 0 else gpu_layers
        try:
            self.model = _internals.LlamaModel(path_model=str(self.path), params=params, verbose=False)
        except ValueError as exc:
            raise ModelLoadError(f"cannot load {self.path}: {exc}") from None
        self.vocab = self.model.vocab
        self.n_vocab = self.model.n_vocab()
        self.metadata = self.model.metadata()
        self._adapters: dict[Path, ctypes.c_void_p] = {}

    def adapter(self, path: Path):
        """Load (once) a LoRA adapter for this model; adapters are freed with the model."""
        path = Path(path)
        if path not in self._adapters:
            if not path.is_file():
                raise ModelLoadError(f"adapter not found: {path}")
            handle = llama_cpp.llama_adapter_lora_init(self.model.model, str(path).encode())
            if not handle:
                raise ModelLoadError(f"cannot load adapter {path} for {self.path.name} (wrong base model?)")
            self._adapters[path] = handle
        return self._adapters[path]

    def token_text(self, token: int) -> str:
        return self.model.token_get_text(token)

    def piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def close(self) -> None:
        self._adapters.clear()  # llama.cpp frees adapters together with their model
        self.model.close()


@dataclass
class MemberStats:
    evaluated: int = 0  # tokens actually run through the model since creation
    calls: int = 0


class Member:
    """A context on a LoadedModel with its own KV cache, optionally with a LoRA applied."""

    def __init__(
        self,
        role: str,
        model: LoadedModel,
        *,
        n_ctx: int,
        threads: int | None = None,
        adapter: Path | None = None,
        adapter_scale: float = 1.0,
        n_batch: int = 512,
    ):
        self.role, self.model = role, model
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = min(n_batch, n_ctx)
        params.n_ubatch = min(n_batch, n_ctx)
        self.threads = threads or default_threads()
        self._share = 1
        params.n_threads = params.n_threads_batch = self.threads
        params.no_perf = True
        try:
            self.ctx = _internals.LlamaContext(model=model.model, params=params, verbose=False)
        except ValueError as exc:
            raise ModelLoadError(f"cannot create a context for {model.path.name}: {exc}") from None
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx.ctx)
        self.n_batch = params.n_batch
        self.adapter_path = Path(adapter) if adapter else None
        if adapter is not None:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(model.adapter(adapter))
            scales = (ctypes.c_float * 1)(adapter_scale)
            if llama_cpp.llama_set_adapters_lora(self.ctx.ctx, handles, 1, scales) != 0:
                raise ModelLoadError(f"cannot apply adapter {adapter}")
        self._batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self._memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self.tokens: list[int] = []  # what the KV cache holds, in order
        self.stats = MemberStats()

    def eval(self, tokens: list[int]) -> np.ndarray:
        """Make the context hold exactly `tokens`; return the last position's logits (a view)."""
        if not tokens:
            raise ValueError("cannot evaluate an empty sequence")
        if len(tokens) > self.n_ctx:
            raise ValueError(f"{len(tokens)} tokens exceed the context size {self.n_ctx}")
        keep = 0
        limit = min(len(tokens), len(self.tokens))
        while keep < limit and tokens[keep] == self.tokens[keep]:
            keep += 1
        keep = min(keep, len(tokens) - 1)  # always evaluate at least one token to get its logits
        if keep < len(self.tokens):
            llama_cpp.llama_memory_seq_rm(self._memory, -1, keep, -1)
            del self.tokens[keep:]
        todo = tokens[keep:]
        for start in range(0, len(todo), self.n_batch):
            part = todo[start : start + self.n_batch]
            self._batch.set_batch(part, n_past=len(self.tokens), logits_all=False)
            rc = llama_cpp.llama_decode(self.ctx.ctx, self._batch.batch)
            if rc != 0:
                llama_cpp.llama_memory_seq_rm(self._memory, -1, len(self.tokens), -1)
                raise RuntimeError(f"llama_decode failed for {self.role} (code {rc})")
            self.tokens.extend(part)
        self.stats.evaluated += len(todo)
        self.stats.calls += 1
        return self.logits()

    def use_threads(self, share: int) -> None:
        """Use threads/share threads, so members decoding at once don't oversubscribe the cores."""
        if share != self._share:
            n = max(1, self.threads // share)
            llama_cpp.llama_set_n_threads(self.ctx.ctx, n, n)
            self._share = share

    def logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def reset(self) -> None:
        llama_cpp.llama_memory_clear(self._memory, True)
        self.tokens.clear()

    def close(self) -> None:
        self._batch.close()
        self.ctx.close()
