"""Embeddings from a composite's large member (or the GGUF a recipe names under `embedding:`).

An `Embedder` is its own llama.cpp context, in embedding mode, over a model taken from the
shared pool, so the weights the composite already holds are not loaded twice. Pooling is
what the GGUF declares (`<arch>.pooling_type`); a generative model declares none, and its
token vectors are mean-pooled. Vectors come back raw; `finish` truncates and normalises
them the way each API asks.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals

from nanocommander.engine.llama.member import LoadedModel
from nanocommander.engine.llama.rpc.devices import Placement
from nanocommander.engine.runtime.pool import ModelPool
from nanocommander.errors import InvalidRequest, ModelLoadError

DEFAULT_EMBED_CTX = 2048


def declared_pooling(model: LoadedModel) -> int:
    """The pooling type the GGUF declares, or NONE (0) when it declares none."""
    arch = model.metadata.get("general.architecture", "")
    try:
        return int(model.metadata.get(f"{arch}.pooling_type", llama_cpp.LLAMA_POOLING_TYPE_NONE))
    except ValueError:
        return llama_cpp.LLAMA_POOLING_TYPE_NONE


class Embedder:
    """One embedding context; `embed` is serialised by a lock (one sequence at a time)."""

    def __init__(
        self,
        pool: ModelPool,
        path: Path,
        *,
        n_ctx: int = DEFAULT_EMBED_CTX,
        threads: int | None = None,
        gpu_layers: int = 0,
        rpc: Placement | None = None,
    ):
        self.pool, self.path = pool, Path(path)
        self.model = pool.acquire(self.path, gpu_layers, rpc)
        try:
            declared = declared_pooling(self.model)
            if declared == llama_cpp.LLAMA_POOLING_TYPE_RANK:
                raise ModelLoadError(f"{self.path.name} is a reranker, not an embedding model")
            params = llama_cpp.llama_context_default_params()
            params.embeddings = True
            params.pooling_type = declared or llama_cpp.LLAMA_POOLING_TYPE_MEAN
            self.n_ctx = min(n_ctx, self.model.model.n_ctx_train() or n_ctx)
            params.n_ctx = params.n_batch = params.n_ubatch = self.n_ctx  # one sequence in one ubatch
            params.n_seq_max = 1
            if threads:
                params.n_threads = params.n_threads_batch = threads
            params.no_perf = True
            try:
                self.ctx = _internals.LlamaContext(model=self.model.model, params=params, verbose=False)
            except ValueError as exc:
                raise ModelLoadError(
                    f"cannot create an embedding context for {self.path.name}: {exc}"
                ) from None
        except BaseException:
            pool.release(self.model)
            raise
        self.pooling = llama_cpp.llama_pooling_type(self.ctx.ctx)
        raw = self.model.model.model
        self.n_embd = int(llama_cpp.llama_model_n_embd_out(raw) or llama_cpp.llama_model_n_embd(raw))
        self._encoder = bool(llama_cpp.llama_model_has_encoder(raw))
        self._batch = _internals.LlamaBatch(n_tokens=self.n_ctx, embd=0, n_seq_max=1, verbose=False)
        self._memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self._lock = threading.Lock()
        self.closed = False

    def tokenize(self, text: str, *, truncate: bool = True) -> list[int]:
        """Tokens as llama.cpp embeds them (BOS as the model wants, specials as text)."""
        ids = self.model.model.tokenize(text.encode("utf-8"), True, False)
        if len(ids) > self.n_ctx:
            if not truncate:
                raise InvalidRequest(
                    f"input length ({len(ids)} tokens) exceeds the context length ({self.n_ctx})"
                )
            ids = ids[: self.n_ctx]
        return ids

    def embed(self, texts: Sequence[str], *, truncate: bool = True) -> tuple[np.ndarray, int]:
        """Raw pooled vectors, one row per text, and the number of tokens embedded."""
        batches = [self.tokenize(t, truncate=truncate) for t in texts]
        out = np.zeros((len(batches), self.n_embd), dtype=np.float32)
        with self._lock:
            if self.closed:
                raise ModelLoadError("model was unloaded")
            for row, ids in enumerate(batches):
                if not ids:
                    continue  # an empty input embeds to zeros
                llama_cpp.llama_memory_clear(self._memory, True)
                self._batch.set_batch(ids, n_past=0, logits_all=True)
                run = llama_cpp.llama_encode if self._encoder else llama_cpp.llama_decode
                if run(self.ctx.ctx, self._batch.batch) != 0:
                    raise ModelLoadError(f"llama.cpp could not embed input {row}")
                ptr = llama_cpp.llama_get_embeddings_seq(self.ctx.ctx, 0)
                if not ptr:
                    raise ModelLoadError("llama.cpp returned no pooled embedding")
                out[row] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
        return out, sum(len(b) for b in batches)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._batch.close()
            self.ctx.close()
            self.pool.release(self.model)


def finish(vectors: np.ndarray, *, dimensions: int | None = None, normalize: bool = True) -> np.ndarray:
    """Keep the first `dimensions` components, then scale each row to unit length (if asked)."""
    if dimensions is not None:
        if dimensions < 1:
            raise InvalidRequest('"dimensions" must be a positive integer')
        vectors = vectors[:, :dimensions]
    if not normalize:
        return vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)
