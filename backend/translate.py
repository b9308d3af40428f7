"""Model descriptions shared by every protocol: members, sizes and digests from recipes and GGUF headers.

(Building the engine's request from a body is backend/prepare.py.)
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from nanocommander.engine.request.recipe import Recipe
from nanocommander.errors import warn_once
from nanocommander.gguf_file import read_gguf

log = logging.getLogger("nanocommander.models")


def gguf_facts(path: str | Path) -> dict[str, Any]:
    """Architecture, context length, parameter count and quantization from a GGUF header (no weights
    read; the registry caches it per file, size and mtime)."""

    info = read_gguf(path)
    return {
        "architecture": info.architecture or "unknown",
        "context_length": info.context_length,
        "embedding_length": info.embedding_length,
        "parameter_count": info.parameters,
        "quantization": info.quantization or "unknown",
        "size": info.size,
        "general.type": info.kind,
        "chat_template": info.chat_template,
    }


def describe(recipe: Recipe) -> dict[str, Any]:
    """The composite's members and alpha, from file headers: cheap enough for /api/tags and /v1/models."""
    members: dict[str, Any] = {}
    for spec in recipe.members:
        src = spec.adapter if spec.is_adapter else spec.source
        entry: dict[str, Any] = {"source": spec.to_dict()}
        path = src.path if src is not None else None
        if path is not None and Path(path).is_file():
            try:
                entry.update(gguf_facts(path))
            except (ValueError, OSError) as exc:  # one bad file flags its model, never hides the others
                entry["error"] = str(exc)
        if spec.is_adapter:
            entry["adapter"] = str(path) if path else None
        members[spec.role] = entry
    size = sum(m.get("size", 0) for m in members.values())
    digest = hashlib.sha256(recipe.dump().encode()).hexdigest()
    out = {"alpha": recipe.alpha, "members": members, "size": size, "digest": digest}
    bad = [f"member {role}: {m['error']}" for role, m in members.items() if "error" in m]
    if bad:
        out["error"] = "; ".join(bad)
        warn_once(log, f"model {recipe.name!r} cannot be loaded: {out['error']}")
    return out
