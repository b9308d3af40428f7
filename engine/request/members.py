"""A recipe's members: where each GGUF comes from and how it is loaded (the parsed form of `members:`).

engine/request/recipe.py parses them; the registry fetches Hub and Ollama sources, the engine loads paths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("large", "base", "tuned")


@dataclass(frozen=True)
class Source:
    """Where a GGUF comes from: a local path, a Hub file, or a local Ollama model."""

    path: Path | None = None
    hf: str | None = None
    file: str | None = None
    revision: str | None = None
    sha256: str | None = None
    ollama: str | None = None

    @property
    def kind(self) -> str:
        return "path" if self.path is not None else "hf" if self.hf else "ollama"

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class MemberSpec:
    """One member of the triple; a tuned member may be an adapter over the base instead of a GGUF."""

    role: str
    source: Source | None = None  # None only for a tuned member given as `adapter:`
    adapter: Source | None = None
    adapter_scale: float = 1.0
    gpu_layers: int = 0
    n_ctx: int | None = None
    threads: int | None = None
    rpc: tuple[str, ...] = ()  # "host:port" of llama.cpp RPC servers that hold its offloaded layers
    tensor_split: tuple[float, ...] = ()  # share of the offloaded layers per device (RPC servers first)

    @property
    def is_adapter(self) -> bool:
        return self.adapter is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.source.to_dict()) if self.source else {}
        if self.adapter is not None:
            ad = self.adapter.to_dict()
            out["adapter"] = ad["path"] if list(ad) == ["path"] else ad
            if self.adapter_scale != 1.0:
                out["adapter_scale"] = self.adapter_scale
        for key in ("gpu_layers", "n_ctx", "threads"):
            value = getattr(self, key)
            if value not in (None, 0):
                out[key] = value
        for key in ("rpc", "tensor_split"):
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        return out
