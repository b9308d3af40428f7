"""Token provenance on the wire: the engine's TokenProvenance entries as JSON, placed by each protocol.

The field is `provenance`, a list with one object per generated token, and appears only when the
request asked (`provenance: true`: in Ollama's `options`, top-level in OpenAI and Kobold bodies):
    {"token": text, "id": id, "source": "large" | "steered" | "tuned",
     "p_large": the large model's top probability, "p_fused": the sampled distribution's top probability,
     "large_token": the large model's own choice (text), "large_id": its id}
`p_large`/`large_*` are null where the large model did not run at that token (a nudged word).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nanocommander.engine.decode.logprobs import token_text
from nanocommander.engine.request.types import Chunk, TokenProvenance


def _p(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def items(entries: Sequence[TokenProvenance]) -> list[dict[str, Any]]:
    return [
        {
            "token": token_text(e.piece),
            "id": e.token,
            "source": e.source,
            "p_large": _p(e.large_top),
            "p_fused": _p(e.fused_top),
            "large_token": None if e.large_piece is None else token_text(e.large_piece),
            "large_id": e.large_token,
        }
        for e in entries
    ]


def place(target: dict[str, Any], chunks: Sequence[Chunk]) -> dict[str, Any]:
    """`target` with `provenance` for these chunks' tokens, when the request asked for it."""
    if any(c.provenance is not None for c in chunks):
        target["provenance"] = items([e for c in chunks for e in c.provenance or ()])
    return target


def fold(target: dict[str, Any], parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A folded reply (stream: false) carries the provenance of every streamed item, in order."""
    if any("provenance" in p for p in parts):
        target["provenance"] = [e for p in parts for e in p.get("provenance") or ()]
    return target
