"""Token provenance: for every generated token, who chose it and how sure each side was.

The engine is the one place where the large model's own distribution and the fused one are both
known, so the reading happens here, on the distribution the token was sampled from (the same
`Generation._last` that log-probabilities read), and the protocols only place the entries.

A token's `source`:
* `tuned`: sampled from the tuned model alone (a nudge, or `member: tuned`);
* `steered`: sampled from the fused distribution whose favourite differs from the large model's
  favourite, and the token is not the large model's choice (the steering changed it);
* `large`: everything else: the large model's own choice, a closed gate, alpha 0, one member alone.
Probabilities are softmax(logits) at temperature 1 over the sampleable ids, so they are the
models' own confidence, not the sampler's reshaped one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from nanocommander.engine.decode.softmax import sampleable, top_probability
from nanocommander.engine.request.types import GenerateRequest, Source, TokenProvenance

FUSED = "fused"  # the distribution came from the fusion of the three members (not one member alone)


def source(by: str, token: int, fused_choice: int, large_choice: int | None) -> Source:
    """Who chose `token`, given what it was sampled from (`by`: FUSED or a member's role)."""
    if by == "tuned":
        return "tuned"
    if by == FUSED and large_choice is not None and fused_choice != large_choice and token != large_choice:
        return "steered"
    return "large"


class ProvenanceReader:
    """Collects one TokenProvenance per committed token; `take` hands them out with their chunk."""

    def __init__(self, n_vocab: int, mask: np.ndarray | None, piece: Callable[[int], bytes]):
        self.n_vocab, self.mask, self._piece = n_vocab, mask, piece
        self._held: list[TokenProvenance] = []

    def add(self, token: int, fused: np.ndarray, rows: Mapping[str, np.ndarray], by: str) -> None:
        """`fused`: the distribution `token` was sampled from; `rows`: each member's logits there."""
        z = fused[: self.n_vocab]
        large_top: float | None = None
        large_choice: int | None = None
        if "large" in rows:
            lz = sampleable(rows["large"], self.n_vocab, self.mask)
            large_choice = int(np.argmax(lz))
            large_top = top_probability(lz)
        fused_choice = int(np.argmax(z))
        self._held.append(
            TokenProvenance(
                token=token,
                piece=self._piece(token),
                source=source(by, token, fused_choice, large_choice),
                large_top=large_top,
                fused_top=top_probability(z.astype(np.float64)),
                large_token=large_choice,
                large_piece=None if large_choice is None else self._piece(large_choice),
            )
        )

    def take(self) -> list[TokenProvenance] | None:
        out, self._held = self._held, []
        return out


def reader(
    req: GenerateRequest, n_vocab: int, mask: np.ndarray | None, piece: Callable[[int], bytes]
) -> ProvenanceReader | None:
    """A reader for `req`, or None when it did not ask for provenance."""
    return ProvenanceReader(n_vocab, mask, piece) if req.provenance else None
