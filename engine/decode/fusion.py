"""The proxy-tuning step: fused = large + alpha * (tuned - base) over the shared vocabulary."""

from __future__ import annotations

import numpy as np

from nanocommander.errors import InvalidRequest


def fuse(
    large: np.ndarray,
    base: np.ndarray | None,
    tuned: np.ndarray | None,
    alpha: float,
    n_vocab: int,
    mask: np.ndarray | None,
    out: np.ndarray,
) -> np.ndarray:
    """Write the fused logits for ids [0, n_vocab) into `out` and return it.

    Inputs may be longer than n_vocab (padded vocabularies); only the shared range counts.
    Ids in `mask` (padding tokens) are set to -inf so they are never sampled.
    """
    np.copyto(out, large[:n_vocab])
    if alpha != 0.0 and base is not None and tuned is not None:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, as an error
            delta = np.subtract(tuned[:n_vocab], base[:n_vocab])
            out += np.float32(alpha) * delta
    if mask is not None:
        out[mask] = -np.inf
    top = out.max()  # NaN if any is NaN; one reduction, cheap next to a forward pass
    if not np.isfinite(top):
        raise InvalidRequest(
            "the fused logits are not finite (NaN or infinite): alpha is too large for these models, "
            "or a member produced non-finite logits"
        )
    return out
