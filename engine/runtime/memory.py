"""How much memory a composite needs, from its members' GGUF headers and the engine's own sizing.

Deliberately simple and documented: weights are the file size (llama.cpp maps them as they are),
and the KV cache is `2 (K and V) * n_layer * n_head_kv * head_dim * 2 bytes (f16) * n_ctx * num_parallel`
per member context (each of its num_parallel sequences, the slots, holds n_ctx tokens). The context
and slot count come from the same `LoadOptions` the composite loads with, so the estimate and the
load cannot disagree about a default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanocommander.engine.llama.rpc.devices import placement
from nanocommander.engine.request.decode_options import large_sequences
from nanocommander.engine.request.options import LoadOptions
from nanocommander.engine.request.recipe import ROLES, Recipe
from nanocommander.gguf_file import GGUFInfo, read_gguf

KV_FORMULA = (
    "2 (K, V) x n_layer x n_head_kv x head_dim x 2 bytes (f16) x num_ctx x num_parallel, per member "
    "(x 2 for the large member when the recipe's steer has plain: its plain reading)"
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
    load = LoadOptions.from_parameters(recipe.parameters, num_parallel)
    want = num_ctx or load.num_ctx
    slots = load.num_parallel
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
