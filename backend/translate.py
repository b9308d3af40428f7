"""Shared by every protocol module: options dict -> GenerateRequest, and model descriptions.

Protocol modules first map their own field names onto Ollama-style option names
(num_predict, repeat_penalty, ...); this module validates them once and builds
the engine's request. Defaults merge in one order: engine, recipe, request.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from nanocommander.engine.request.options import clean_options, merge_sampling
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.text.grammar import json_grammar
from nanocommander.errors import InvalidRequest
from nanocommander.recipe import Recipe


def grammar_for_format(fmt: Any) -> str | None:
    """Ollama `format`: "json" or a JSON schema object; "" or None means free text."""
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return json_grammar(None)
    if isinstance(fmt, dict):
        return json_grammar(fmt)
    raise InvalidRequest('format must be "json" or a JSON schema object')


def make_request(
    recipe: Recipe,
    prompt: str | list[int],
    options: dict[str, Any] | None,
    *,
    grammar: str | None = None,
    add_bos: bool = True,
    ignore_eos: bool = False,
    trim_stop: bool = True,
) -> GenerateRequest:
    opts = {**recipe.parameters, **clean_options(options)}
    if grammar:
        opts["grammar"] = grammar
    num_predict = int(opts.get("num_predict", -1))
    return GenerateRequest(
        prompt=prompt,
        sampling=merge_sampling(opts),
        num_predict=num_predict,
        stop=tuple(opts.get("stop", ())),
        alpha=opts.get("alpha"),
        member=opts.get("member", "composite"),
        steer=opts.get("steer"),
        speculative=opts.get("speculative"),
        add_bos=add_bos,
        ignore_eos=ignore_eos,
        trim_stop=trim_stop,
    )


def gguf_facts(path: str | Path) -> dict[str, Any]:
    """Architecture, context length, parameter count and quantization from a GGUF header (no weights
    read; the registry caches it per file, size and mtime)."""
    from nanocommander.registry.gguf_info import read_gguf

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


def size_label(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def describe(recipe: Recipe) -> dict[str, Any]:
    """The composite's members and alpha, from file headers: cheap enough for /api/tags and /v1/models."""
    members: dict[str, Any] = {}
    for spec in recipe.members:
        src = spec.adapter if spec.is_adapter else spec.source
        entry: dict[str, Any] = {"source": spec.to_dict()}
        path = src.path if src is not None else None
        if path is not None and Path(path).is_file():
            entry.update(gguf_facts(path))
        if spec.is_adapter:
            entry["adapter"] = str(path) if path else None
        members[spec.role] = entry
    size = sum(m.get("size", 0) for m in members.values())
    digest = hashlib.sha256(recipe.dump().encode()).hexdigest()
    return {"alpha": recipe.alpha, "members": members, "size": size, "digest": digest}
