"""One member of the composite: a llama.cpp context over a (possibly shared) model.

A member serves `Hold` requests: "make sequence s hold exactly these tokens and give me the
logits of the last n positions". It keeps the longest common prefix with what its KV cache
holds and evaluates only the rest, so prefix reuse across turns, lazy catch-up, speculative
verification and rollback are all the same call; requests of several sequences share one batch.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals

from nanocommander.engine.llama import determinism
from nanocommander.engine.llama import log as llamalog
from nanocommander.engine.llama.rpc.devices import Placement, RpcDevices
from nanocommander.errors import ModelLoadError

_backend_ready = False
_backend_lock = threading.Lock()


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llamalog.install()  # llama.cpp's log only with --verbose or NANOCOMMANDER_DEBUG
            llama_cpp.llama_backend_init()
            _backend_ready = True


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class LoadedModel:
    """A llama_model loaded once and shared by every context (and composite) that uses the file."""

    def __init__(self, path: Path, gpu_layers: int = 0, rpc: Placement | None = None):
        _init_backend()
        self.path = Path(path)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if gpu_layers < 0 else gpu_layers
        self.rpc = RpcDevices(rpc, params) if rpc else None  # checks each server, offloads to its devices
        try:
            self.model = _internals.LlamaModel(path_model=str(self.path), params=params, verbose=False)
        except ValueError as exc:
            raise ModelLoadError(f"cannot load {self.path}: {exc}") from None
        self.vocab = self.model.vocab
        self.n_vocab = self.model.n_vocab()
        self.metadata = self.model.metadata()
        self._adapters: dict[Path, list] = {}  # path -> [handle, users]
        self._adapters_lock = threading.Lock()

    def retain_adapter(self, path: Path):
        """Load (once) a LoRA adapter for this model and count one more user of it; returns its handle."""
        path = Path(path).resolve()
        with self._adapters_lock:
            entry = self._adapters.get(path)
            if entry is None:
                if not path.is_file():
                    raise ModelLoadError(f"adapter not found: {path}")
                handle = llama_cpp.llama_adapter_lora_init(self.model.model, str(path).encode())
                if not handle:
                    raise ModelLoadError(
                        f"cannot load adapter {path} for {self.path.name} (wrong base model?)"
                    )
                entry = self._adapters[path] = [handle, 0]
            entry[1] += 1
            return entry[0]

    def release_adapter(self, path: Path) -> None:
        """One user fewer; the last one frees the adapter. Loaded adapters are not free: llama.cpp sizes
        every context's compute graph by all the adapters its model has loaded (graph_max_nodes)."""
        path = Path(path).resolve()
        with self._adapters_lock:
            entry = self._adapters.get(path)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._adapters[path]
                llama_cpp.llama_adapter_lora_free(entry[0])

    def loaded_adapters(self) -> list[Path]:
        with self._adapters_lock:
            return list(self._adapters)

    def token_text(self, token: int) -> str:
        return self.model.token_get_text(token)

    def piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def is_pad(self, token: int) -> bool:
        """Unused or [PAD...] ids: padding a vocabulary to a round size, never to be sampled."""
        attr = llama_cpp.llama_vocab_get_attr(self.vocab, token)
        return bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_UNUSED) or self.token_text(token).startswith("[PAD")

    def close(self) -> None:
        self._adapters.clear()  # llama.cpp frees adapters together with their model
        self.model.close()
        if self.rpc:
            self.rpc.close()


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int | None = None) -> int:
    """Length of the common prefix of two token lists (at most `limit`); C-speed when one extends the other."""
    n = min(len(a), len(b), len(a) if limit is None else max(limit, 0))
    if list(a[:n]) == list(b[:n]):  # the usual case: a sequence grows by the tokens it was given
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if list(a[lo:mid]) == list(b[lo:mid]):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class MemberStats:
    evaluated: int = 0  # tokens actually run through the model since creation
    calls: int = 0  # llama_decode calls


SEED_GAIN = 8  # tokens a sequence must gain from another's cache to be worth a stream copy


@dataclass(frozen=True)
class Hold:
    """What one sequence needs from a member: hold exactly `tokens`, logits of the last `n_logits`.

    The member keeps the longest common prefix of `tokens` with what its KV cache holds for the
    sequence and evaluates only the rest, so the same request covers a new prompt (prefix reuse),
    one more token (plain decoding), catching up on tokens a lazy member skipped, verifying drafted
    tokens (n_logits > 1) and rolling back rejected ones (the cache drops what `tokens` lacks).
    """

    seq: int
    tokens: Sequence[int]
    n_logits: int = 1
    like: int | None = None  # a sequence of the same context whose cache may seed this one (see Member.hold)


class Member:
    """A context on a LoadedModel with its own KV cache (`n_seq` sequences), optionally with a LoRA.

    `n_ctx` is what one sequence may hold. llama.cpp's context size is the total over sequences, so
    the context is made with n_ctx * n_seq cells in n_seq separate streams (kv_unified off): every
    sequence gets exactly n_ctx cells and the KV cache costs n_seq times one sequence's.
    """

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
        n_seq: int = 1,
        deterministic: bool = False,
    ):
        self.role, self.model = role, model
        self.deterministic = deterministic
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_seq
        params.n_batch = params.n_ubatch = min(n_batch, n_ctx * n_seq)
        params.n_seq_max = n_seq
        params.kv_unified = False
        if deterministic:  # every position alone: its logits do not depend on the batch (determinism.py)
            determinism.context_params(params)
        self.threads = threads or default_threads()
        self._share = 1
        params.n_threads = params.n_threads_batch = self.threads
        params.no_perf = True
        try:
            self.ctx = _internals.LlamaContext(model=model.model, params=params, verbose=False)
        except ValueError as exc:
            raise ModelLoadError(f"cannot create a context for {model.path.name}: {exc}") from None
        self.n_ctx = llama_cpp.llama_n_ctx_seq(self.ctx.ctx)  # per sequence
        self.n_ctx_total = llama_cpp.llama_n_ctx(self.ctx.ctx)
        self.n_batch = params.n_batch
        self.n_seq = n_seq
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self.cached: list[list[int]] = [[] for _ in range(n_seq)]  # what the KV cache holds, per sequence
        self.stats = MemberStats()
        self.adapter_path: Path | None = None
        self.adapter_scale = 1.0
        if adapter is not None:
            self.set_adapter(adapter, adapter_scale)

    def set_adapter(self, adapter: Path | None, scale: float = 1.0) -> None:
        """Apply this LoRA instead of the current one, or none; clears the KV cache, which llama.cpp
        keeps although it was computed under the old adapter (adapter families switch adapters)."""
        if adapter is None:
            rc = llama_cpp.llama_set_adapters_lora(self.ctx.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.model.retain_adapter(adapter))
            rc = llama_cpp.llama_set_adapters_lora(self.ctx.ctx, handles, 1, (ctypes.c_float * 1)(scale))
            if rc != 0:
                self.model.release_adapter(adapter)
        if rc != 0:
            raise ModelLoadError(f"cannot apply adapter {adapter}")
        if self.adapter_path is not None:
            self.model.release_adapter(self.adapter_path)
        self.adapter_path, self.adapter_scale = (Path(adapter) if adapter else None), scale
        self.reset(wipe=False)

    @property
    def tokens(self) -> list[int]:
        """Sequence 0's cached tokens (the single-sequence view)."""
        return self.cached[0]

    def eval(self, tokens: Sequence[int], seq: int = 0) -> np.ndarray:
        """Make sequence `seq` hold exactly `tokens`; return the last position's logits (a copy)."""
        return self.hold([Hold(seq, tokens)])[0][-1]

    def hold(self, requests: Sequence[Hold]) -> list[np.ndarray]:
        """Serve several sequences' Holds in one batch; returns per request an (n_logits, n_vocab) array.

        All new tokens of all sequences go through llama_decode together (split into n_batch chunks),
        so many sequences, a prompt and a draft cost one pass over the weights per chunk.
        """
        entries: list[tuple[int, int, int, int]] = []  # (seq, pos, token, output row or -1)
        outs: list[np.ndarray] = []
        rows: list[tuple[int, int]] = []  # output row -> (request index, row in its array)
        seen: set[int] = set()
        for i, req in enumerate(requests):
            if req.seq in seen or not 0 <= req.seq < self.n_seq:
                raise ValueError(f"bad or repeated sequence id {req.seq} for {self.role}")
            seen.add(req.seq)
            tokens = list(req.tokens)
            n_logits = max(1, req.n_logits)
            if len(tokens) < n_logits:
                raise ValueError("cannot read logits beyond the sequence")
            if len(tokens) > self.n_ctx:
                raise ValueError(f"{len(tokens)} tokens exceed the context size {self.n_ctx}")
            if req.like is not None:
                self._seed(req.seq, req.like, tokens, len(tokens) - n_logits)
            keep = self._truncate_to_prefix(req.seq, tokens, len(tokens) - n_logits)
            first_logit = len(tokens) - n_logits
            outs.append(np.empty((n_logits, self.model.n_vocab), dtype=np.float32))
            for pos in range(keep, len(tokens)):
                row = -1
                if pos >= first_logit:
                    row = len(rows)
                    rows.append((i, pos - first_logit))
                entries.append((req.seq, pos, tokens[pos], row))
        for chunk in self._chunks(entries):
            self._decode(chunk)
            for j, (_, _, _, row) in enumerate(chunk):
                if row >= 0:
                    i, r = rows[row]
                    ptr = llama_cpp.llama_get_logits_ith(self.ctx.ctx, j)
                    outs[i][r] = np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))
        self.stats.evaluated += len(entries)
        return outs

    def _chunks(self, entries: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int, int]]]:
        """n_batch tokens per llama_decode; in the reproducible mode one sequence per call, since
        llama.cpp puts one token of each sequence into a ubatch even when n_ubatch is 1 (an F32
        LoRA then multiplies two rows at once, by other kernels: 1.4e-6 on the tiny Q4_K_M)."""
        if not self.deterministic:
            return [entries[i : i + self.n_batch] for i in range(0, len(entries), self.n_batch)]
        out: list[list[tuple[int, int, int, int]]] = []
        for e in entries:
            if out and out[-1][0][0] == e[0] and len(out[-1]) < self.n_batch:
                out[-1].append(e)
            else:
                out.append([e])
        return out

    def kept(self, seq: int, tokens: Sequence[int], n_logits: int = 1) -> int:
        """How many of `tokens` a Hold on `seq` keeps from the cache (the rest is evaluated)."""
        return common_prefix(self.cached[seq], tokens, len(tokens) - max(1, n_logits))

    def _seed(self, seq: int, like: int, tokens: list[int], limit: int) -> None:
        """Copy sequence `like`'s cache into `seq` when it shares SEED_GAIN or more tokens more of
        `tokens` (a second reading of a reply starts from the first's prompt instead of evaluating
        it again). Across the separate streams llama.cpp copies the whole stream, bit for bit."""
        if like == seq or not 0 <= like < self.n_seq:
            return
        gain = common_prefix(self.cached[like], tokens, limit) - common_prefix(
            self.cached[seq], tokens, limit
        )
        if gain >= SEED_GAIN:
            llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
            llama_cpp.llama_memory_seq_cp(self._memory, like, seq, -1, -1)
            self.cached[seq] = list(self.cached[like])

    def _truncate_to_prefix(self, seq: int, tokens: list[int], limit: int) -> int:
        """Drop what sequence `seq` holds beyond its common prefix with `tokens` (at most `limit`)."""
        keep = common_prefix(self.cached[seq], tokens, limit)
        self.truncate(seq, keep)
        return keep

    def _decode(self, chunk: list[tuple[int, int, int, int]]) -> None:
        b = self._batch
        b.n_tokens = len(chunk)
        for j, (seq, pos, token, row) in enumerate(chunk):
            b.token[j] = token
            b.pos[j] = pos
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = seq
            b.logits[j] = row >= 0
        rc = llama_cpp.llama_decode(self.ctx.ctx, b)
        self.stats.calls += 1
        if rc != 0:
            for seq in {e[0] for e in chunk}:  # the failed chunk may be partly in the cache
                llama_cpp.llama_memory_seq_rm(self._memory, seq, len(self.cached[seq]), -1)
            raise RuntimeError(f"llama_decode failed for {self.role} (code {rc})")
        for seq, _, token, _ in chunk:
            self.cached[seq].append(token)

    def truncate(self, seq: int, n: int) -> None:
        """Keep only the first `n` tokens of sequence `seq` in the KV cache."""
        if n < len(self.cached[seq]):
            llama_cpp.llama_memory_seq_rm(self._memory, seq, n, -1)
            del self.cached[seq][n:]

    def use_threads(self, share: int) -> None:
        """Use threads/share threads, so members decoding at once don't oversubscribe the cores."""
        if share != self._share:
            n = max(1, self.threads // share)
            llama_cpp.llama_set_n_threads(self.ctx.ctx, n, n)
            self._share = share

    def reset(self, wipe: bool = True) -> None:
        """Empty every sequence; `wipe=False` forgets the cells without zeroing the buffers (cheap, and
        pages no request has touched stay out of resident memory)."""
        llama_cpp.llama_memory_clear(self._memory, wipe)
        for cached in self.cached:
            cached.clear()

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self.ctx.close()
        if self.adapter_path is not None:  # after the context that used it
            self.model.release_adapter(self.adapter_path)
            self.adapter_path = None
