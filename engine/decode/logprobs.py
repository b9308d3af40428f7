"""Log-probabilities of the tokens a composite generates.

They come from the distribution the sampler draws from: log_softmax(fused / temperature)
(at temperature 0, the raw fused logits), so evaluation harnesses read the composite's
own probabilities. Penalties and logit bias are request-specific shaping and are left
out. `logprobs_member` reads one member's logits at the same position instead (it must
be one of the members the step evaluates).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from nanocommander.engine.decode.softmax import log_softmax, sampleable
from nanocommander.engine.request.types import GenerateRequest, TokenLogprob
from nanocommander.errors import InvalidRequest

MAX_TOP = 20  # OpenAI's and Ollama's limit on top_logprobs


def token_text(piece: bytes) -> str:
    """A token's text; a piece of a multi-byte character reads `bytes:\\xe2\\x80` (OpenAI's habit),
    so distinct tokens never collide on U+FFFD."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)


def entry(
    logits: np.ndarray, token: int, k: int, temperature: float, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """The chosen token's log-probability and the k most likely tokens (best first)."""
    lp = log_softmax(logits, temperature)
    top: tuple[TokenLogprob, ...] = ()
    if k > 0:
        k = min(k, lp.shape[0])
        ids = np.argpartition(-lp, k - 1)[:k]
        ids = ids[np.argsort(-lp[ids], kind="stable")]
        top = tuple(TokenLogprob(int(i), piece(int(i)), float(lp[i])) for i in ids)
    return TokenLogprob(token, piece(token), float(lp[token]), top)


class LogprobReader:
    """Collects one TokenLogprob per committed token; `take` hands them out with their chunk."""

    def __init__(
        self, req: GenerateRequest, n_vocab: int, mask: np.ndarray | None, piece: Callable[[int], bytes]
    ):
        self.k = min(max(int(req.logprobs or 0), 0), MAX_TOP)
        self.temperature = req.sampling.temperature
        self.role = req.logprobs_member
        self.n_vocab, self.mask, self._piece = n_vocab, mask, piece
        self._held: list[TokenLogprob] = []

    def add(self, token: int, fused: np.ndarray, rows: Mapping[str, np.ndarray]) -> None:
        """`fused`: the distribution `token` was sampled from; `rows`: each member's logits there."""
        logits = fused
        if self.role != "composite":
            logits = sampleable(rows[self.role], self.n_vocab, self.mask, np.float32)
        self._held.append(entry(logits, token, self.k, self.temperature, self._piece))

    def take(self) -> list[TokenLogprob] | None:
        out, self._held = self._held, []
        return out


def reader(
    req: GenerateRequest,
    roles: Sequence[str],
    n_vocab: int,
    mask: np.ndarray | None,
    piece: Callable[[int], bytes],
) -> LogprobReader | None:
    """A reader for `req` (whose plan runs the members in `roles`), or None when it asked for none."""
    if req.logprobs is None:
        return None
    if req.logprobs_member != "composite" and req.logprobs_member not in roles:
        raise InvalidRequest(
            f"logprobs_member {req.logprobs_member!r} is not evaluated by this request "
            "(at alpha 0 only the large member runs; with `member` set, only that one)"
        )
    return LogprobReader(req, n_vocab, mask, piece)


def special_piece(piece: Callable[..., bytes], shown: frozenset[int]) -> Callable[[int], bytes]:
    """`piece` that also renders the control tokens in `shown` (tool-call markers) as their text."""
    if not shown:
        return piece
    return lambda token: piece(token, token in shown)
