"""What `show` reports about a GGUF, and how much memory a composite needs.

Metadata comes from the file's header only (key/values and tensor descriptions), read
by `gguf_header.read_header`: it skips the tokenizer's arrays instead of building
objects for them, so a header reads in milliseconds where the `gguf` package's
GGUFReader takes seconds (5 s for SmolLM2's, ~15 s for a 150k-token vocabulary).
Results are cached per file (path, size, mtime), so `/api/show`, `/api/tags` and
`/v1/models` read each file once per change. The memory estimate is deliberately
simple and documented: weights are the file size (llama.cpp maps them as they are),
and the KV cache is `2 (K and V) * n_layer * n_head_kv * head_dim * 2 bytes (f16) * n_ctx * num_parallel`
per member context (each of its num_parallel sequences, the slots, holds n_ctx tokens).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from nanocommander import units
from nanocommander.engine.llama.rpc.devices import placement
from nanocommander.engine.request.decode_options import large_sequences
from nanocommander.engine.request.options import num_parallel as resolve_slots
from nanocommander.engine.request.recipe import ROLES, Recipe
from nanocommander.registry.gguf_header import read_header, read_tensor_shapes

DEFAULT_NUM_CTX = 4096  # the engine's default context (engine/runtime/composite.py)
KV_FORMULA = (
    "2 (K, V) x n_layer x n_head_kv x head_dim x 2 bytes (f16) x num_ctx x num_parallel, per member "
    "(x 2 for the large member when the recipe's steer has plain: its plain reading)"
)


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    size: int
    architecture: str | None
    name: str | None
    kind: str  # "model" or "adapter"
    parameters: int
    quantization: str | None
    context_length: int | None
    embedding_length: int | None
    n_layer: int | None
    n_head_kv: int | None
    head_dim: int | None
    chat_template: str | None
    adapter_type: str | None = None  # "lora" for a llama.cpp LoRA adapter

    @property
    def parameter_size(self) -> str:
        return units.count(self.parameters)

    def kv_bytes(self, n_ctx: int) -> int:
        """f16 K and V for every layer at `n_ctx` tokens (0 for adapters or missing metadata)."""
        if not (self.n_layer and self.n_head_kv and self.head_dim):
            return 0
        return 2 * self.n_layer * n_ctx * self.n_head_kv * self.head_dim * 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "parameters": self.parameters,
            "parameter_size": self.parameter_size,
            "quantization": self.quantization,
            "size": self.size,
            "context_length": self.context_length,
            "kind": self.kind,
        }


_CACHE: dict[tuple[str, int, int], GGUFInfo] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 256


def read_gguf(path: str | Path) -> GGUFInfo:
    """Read a GGUF's header, once per (file, size, mtime). Raises ValueError for a file that is not GGUF."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is None:
        hit = _read(path, st.st_size)
        with _CACHE_LOCK:
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = hit
    return hit if hit.path == path else dataclasses.replace(hit, path=path)


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape in ggml order (ne[0] first: a weight is (in, out)), for checking
    an adapter against its base. Raises ValueError for a file that is not GGUF."""
    try:
        return read_tensor_shapes(path)
    except ValueError as exc:
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from exc


def _read(path: Path, size: int) -> GGUFInfo:
    try:
        fields, tensors = read_header(path)
    except ValueError as exc:
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from exc

    def value(key: str) -> Any:
        return fields.get(key)

    arch = value("general.architecture")
    kind = "adapter" if value("general.type") == "adapter" else "model"
    n_embd, n_head = value(f"{arch}.embedding_length"), value(f"{arch}.attention.head_count")
    head_dim = value(f"{arch}.attention.key_length") or (n_embd // n_head if n_embd and n_head else None)
    ftype = value("general.file_type")
    quant = None
    if ftype is not None or tensors:
        if ftype is not None:
            try:
                quant = gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
            except ValueError:
                quant = f"type {ftype}"
        else:
            try:
                quant = gguf.GGMLQuantizationType(tensors[0][1]).name
            except ValueError:
                quant = f"type {tensors[0][1]}"
    n_head_kv = value(f"{arch}.attention.head_count_kv") or n_head
    if isinstance(n_head_kv, list):  # per-layer list in some architectures: the largest bounds the cache
        n_head_kv = max(n_head_kv)
    return GGUFInfo(
        path=path,
        size=size,
        architecture=arch,
        name=value("general.name"),
        kind=kind,
        parameters=sum(n for n, _ in tensors),
        quantization=quant,
        context_length=value(f"{arch}.context_length"),
        embedding_length=n_embd,
        n_layer=value(f"{arch}.block_count"),
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        chat_template=value("tokenizer.chat_template"),
        adapter_type=value("adapter.type") if kind == "adapter" else None,
    )


@dataclass(frozen=True)
class MemberMemory:
    role: str
    weights: int  # bytes of weights this member adds (0 when it shares another member's file)
    kv_cache: int  # all slots together
    n_ctx: int  # per slot
    num_parallel: int = 1

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


@dataclass(frozen=True)
class MemoryEstimate:
    members: dict[str, MemberMemory] = field(default_factory=dict)
    free: int | None = None  # MemAvailable from /proc/meminfo, None where unknown

    @property
    def total(self) -> int:
        return sum(m.total for m in self.members.values())

    @property
    def fits(self) -> bool:
        return self.free is None or self.total <= self.free

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": {
                r: {
                    "weights": m.weights,
                    "kv_cache": m.kv_cache,
                    "n_ctx": m.n_ctx,
                    "num_parallel": m.num_parallel,
                    "total": m.total,
                }
                for r, m in self.members.items()
            },
            "kv_formula": KV_FORMULA,
            "total": self.total,
            "free": self.free,
            "fits": self.fits,
        }


def estimate_family(
    recipe: Recipe,
    adapters: Iterable[Path],
    tuned_contexts: int,
    num_ctx: int | None = None,
    num_parallel: int | None = None,
) -> MemoryEstimate:
    """An adapter family (engine/runtime/family.py) served for `recipe`'s large and base: their weights and
    contexts once, the `adapters` loaded, and `tuned_contexts` tuned contexts of the base's KV shape."""
    first = estimate_memory(recipe, num_ctx, num_parallel, tuned_contexts=tuned_contexts)
    tuned = first.members["tuned"]
    weights = sum(p.stat().st_size for p in {Path(a).resolve() for a in adapters} if p.exists())
    members = {**first.members, "tuned": dataclasses.replace(tuned, weights=weights)}
    return MemoryEstimate(members, first.free)


def estimate_memory(
    recipe: Recipe, num_ctx: int | None = None, num_parallel: int | None = None, *, tuned_contexts: int = 1
) -> MemoryEstimate:
    """Bytes a resolved recipe needs: each member's weights (shared files counted once) plus its KV cache.

    The context per member follows the engine: `num_ctx` argument, else the member's
    `n_ctx`, else parameters.num_ctx, else 4096, capped at the model's training context;
    the KV cache holds that many tokens for each of the model's slots (parameters.num_parallel,
    else `num_parallel`, the server's setting, else 4). A tuned adapter adds its own file size
    and uses the base's KV shape (one cache per tuned context: an adapter family keeps
    `tuned_contexts` of them). A steer with `plain` gives the large model two sequences per slot.

    Raises:
        ValueError: a member is not a local GGUF (resolve the recipe through the store first).
    """
    want = num_ctx or recipe.parameters.get("num_ctx") or DEFAULT_NUM_CTX
    slots = resolve_slots(recipe.parameters, num_parallel)
    infos: dict[str, GGUFInfo] = {}
    seen: set[Path] = set()
    members: dict[str, MemberMemory] = {}
    for role in ROLES:
        spec = recipe.member(role)
        src = recipe.base.source if spec.is_adapter else spec.source
        if src is None or src.path is None:
            raise ValueError(f"member {role} is not a local file; pull the model first")
        info = infos.get(str(src.path)) or read_gguf(src.path)
        infos[str(src.path)] = info
        n_ctx = num_ctx or spec.n_ctx or want
        if info.context_length:
            n_ctx = min(n_ctx, info.context_length)
        if not spec.is_adapter and placement(spec) is not None:  # weights and KV cache on RPC servers
            members[role] = MemberMemory(role, 0, 0, n_ctx, slots)
            continue
        weights = 0
        real = src.path.resolve()
        if real not in seen:
            seen.add(real)
            weights = info.size
        if spec.is_adapter and spec.adapter is not None and spec.adapter.path is not None:
            weights += spec.adapter.path.stat().st_size
        per_slot = {"tuned": tuned_contexts, "large": large_sequences(recipe.steer)}.get(role, 1)
        kv = info.kv_bytes(n_ctx) * slots * per_slot
        members[role] = MemberMemory(role, weights, kv, n_ctx, slots)
    return MemoryEstimate(members, free_memory())


def free_memory() -> int | None:
    """MemAvailable in bytes, or None where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
