"""Embedding requests and answers on the wire: Ollama's /api/embed and /api/embeddings, OpenAI's /v1/embeddings.

Pure functions, like ollama_api and openai_api (whose helpers they share); the vectors
come from engine.embed.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nanocommander.backend.ollama.api import _typed as typed
from nanocommander.backend.ollama.api import keep_alive, model_name, ns
from nanocommander.errors import InvalidRequest


@dataclass(frozen=True)
class EmbedCall:
    """A parsed /api/embed (or legacy /api/embeddings) body."""

    model: str
    inputs: tuple[str, ...]
    truncate: bool = True
    dimensions: int | None = None
    keep_alive: float | None = None
    legacy: bool = False  # /api/embeddings: one `prompt`, one raw (unnormalised) `embedding`


def parse_ollama(body: Mapping[str, Any], *, legacy: bool = False) -> EmbedCall:
    if legacy:
        inputs: Any = [typed(body, "prompt", str, "a string") or ""]
    else:
        raw = body.get("input", [])
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise InvalidRequest('"input" must be a string or a list of strings')
    dims = typed(body, "dimensions", int, "an integer")
    if isinstance(dims, bool) or (dims is not None and dims < 1):
        raise InvalidRequest('"dimensions" must be a positive integer')
    truncate = typed(body, "truncate", bool, "a boolean")
    return EmbedCall(
        model=model_name(body),
        inputs=tuple(inputs),
        truncate=True if truncate is None else truncate,
        dimensions=dims,
        keep_alive=keep_alive(body),
        legacy=legacy,
    )


def ollama_response(
    call: EmbedCall, vectors: Sequence[Sequence[float]], n_tokens: int, total_s: float, load_s: float
) -> dict[str, Any]:
    if call.legacy:
        return {"embedding": list(vectors[0]) if len(vectors) else []}
    return {
        "model": call.model,
        "embeddings": [list(v) for v in vectors],
        "total_duration": ns(total_s),
        "load_duration": ns(load_s),
        "prompt_eval_count": n_tokens,
    }


def openai_inputs(body: Mapping[str, Any]) -> tuple[list[str], int | None, str]:
    """/v1/embeddings: (inputs, dimensions, encoding_format)."""
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise InvalidRequest(
            '"input" must be a non-empty string or list of strings (token arrays are not supported)'
        )
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise InvalidRequest('"dimensions" must be a positive integer')
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise InvalidRequest('"encoding_format" must be "float" or "base64"')
    return inputs, dims, fmt


def openai_response(model: str, vectors: Any, n_tokens: int, encoding_format: str) -> dict[str, Any]:
    """`vectors`: a float array, one row per input; base64 is the little-endian float32 bytes."""
    data = []
    for i, row in enumerate(vectors):
        if encoding_format == "base64":
            value: Any = base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()
        else:
            value = [float(x) for x in row]
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }
