"""Shared by every protocol module: options dict -> GenerateRequest, and model descriptions.

Protocol modules first map their own field names onto Ollama-style option names
(num_predict, repeat_penalty, ...); this module validates them once and builds
the engine's request. Defaults merge in one order: engine, recipe, request.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from nanocommander.engine.grammar import json_grammar
from nanocommander.engine.options import clean_options, merge_sampling
from nanocommander.engine.types import GenerateRequest

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


@functools.lru_cache(maxsize=256)
def gguf_facts(path: str, mtime: float) -> dict[str, Any]:
    """Architecture, context length, parameter count and quantization from a GGUF header (no weights read)."""
    import gguf

    reader = gguf.GGUFReader(path)

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        if field is None:
            return None
        part = field.parts[field.data[0]]
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        return part.tolist()[0] if hasattr(part, "tolist") else part

    arch = value("general.architecture") or "unknown"
    n_params = int(sum(int(t.n_elements) for t in reader.tensors))
    ftype = value("general.file_type")
    try:
        quant = (
            gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_") if ftype is not None else "unknown"
        )
    except ValueError:
        quant = "unknown"
    return {
        "architecture": arch,
        "context_length": value(f"{arch}.context_length"),
        "embedding_length": value(f"{arch}.embedding_length"),
        "parameter_count": n_params,
        "quantization": quant,
        "size": Path(path).stat().st_size,
        "general.type": value("general.type") or "model",
        "chat_template": value("tokenizer.chat_template"),
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
            entry.update(gguf_facts(str(path), Path(path).stat().st_mtime))
        if spec.is_adapter:
            entry["adapter"] = str(path) if path else None
        members[spec.role] = entry
    size = sum(m.get("size", 0) for m in members.values())
    digest = hashlib.sha256(recipe.dump().encode()).hexdigest()
    return {"alpha": recipe.alpha, "members": members, "size": size, "digest": digest}
