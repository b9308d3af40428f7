"""`reject: auto`: the recommended rule's threshold, measured on the composite's own adapter.

`reject` asks the tuned model whether it rejects the large model's favourite token: puts it that
many nats below its own. How far below depends on the adapter, not on the style: an adapter
trained hard on a strong style puts the large model's word 10-30 nats down at its style tokens, a
gentle one (lower rank, lower learning rate, fewer epochs) 2-5 nats, so a fixed 6 nats steered
one adapter fully and another not at all (issue 22). So the threshold is read off the adapter's
own rejections: the tuned model answers a few probe prompts alone (greedy, as it would write), the
large model reads those replies, and at every position where their favourites differ the margin
(tuned's favourite minus the large model's, in the tuned model's logits) is collected. The
threshold is a low quantile of those margins, clipped to [FLOOR, CEILING]: at its own style
tokens a tuned model disagrees by more than at the positions where it merely guesses otherwise.

The measurement runs once per composite (an adapter family's composites each measure their own),
at load when the recipe asks for it (fresh caches: the threshold then depends on the recipe alone),
else at the first request that needs it: about 3 x 24 tuned tokens and one large-model reading,
~2-4 s on a 2-core CPU for the 0.5B/1.5B pair. Requests set a number to skip it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nanocommander.engine.decode.steering import rejection_margins
from nanocommander.engine.request.decode_options import AUTO, Steer
from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.errors import NanoCommanderError

PROBES = (
    "Tell me about your favourite season.",
    "How should I start learning to program?",
    "What makes a good friend?",
)
PROBE_TOKENS = 24
QUANTILE = 0.25
FLOOR, CEILING = 1.0, 6.0  # nats; CEILING is the fixed rule's value, which suits strong adapters
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}


@dataclass(frozen=True)
class Measured:
    """What was measured and the threshold it gave (shown by `show`/ps, recorded by calibrate)."""

    reject: float
    margins: int  # positions where the tuned and large favourites differed
    raw: float | None = None  # the quantile before clipping (None: no margins)
    quantile: float = QUANTILE

    def to_dict(self) -> dict:
        raw = None if self.raw is None else round(self.raw, 3)
        return {
            "reject": round(self.reject, 3),
            "margins": self.margins,
            "raw": raw,
            "quantile": self.quantile,
        }


def threshold(margins: Sequence[float], quantile: float = QUANTILE) -> Measured:
    """The `reject` for these margins: their `quantile`, clipped; CEILING when there are none (a
    tuned model that agrees with the large model everywhere has no style to steer with)."""
    if not len(margins):
        return Measured(CEILING, 0)
    raw = float(np.quantile(np.asarray(margins, dtype=np.float64), quantile))
    return Measured(float(np.clip(raw, FLOOR, CEILING)), len(margins), raw, quantile)


def measure(comp, probes: Sequence[str] = PROBES, n_tokens: int = PROBE_TOKENS) -> Measured:
    """Run the probes through `comp` (a Composite) and return the adapter's threshold."""
    prompts = [comp.chat_prompt([{"role": "user", "content": p}], num_predict=n_tokens) for p in probes]
    reqs = [
        GenerateRequest(prompt=p, sampling=merge_sampling(GREEDY), num_predict=n_tokens, member="tuned")  # type: ignore[arg-type]
        for p in prompts
    ]
    replies = ["".join(c.text for c in chunks) for chunks in comp.generate_batch(reqs)]
    margins = [
        m for prompt, reply in zip(prompts, replies, strict=True) for m in margins_of(comp, prompt, reply)
    ]
    return threshold(margins)


def margins_of(comp, prompt: str, reply: str) -> list[float]:
    """The rejection margins along `reply` after the rendered `prompt` (teacher-forced, one job);
    calibrate collects them the same way."""
    ids = comp.tokenize(prompt + reply, add_bos=True, special=True)
    n = len(ids) - len(comp.tokenize(prompt, add_bos=True, special=True))
    if n < 1:
        return []
    logits = comp.forced(ids, n, ("large", "tuned"))
    return rejection_margins(logits["large"], logits["tuned"], comp.vocab.n_vocab, comp.vocab.mask)


class AutoReject:
    """One composite's measured threshold: measured once, on first need, by one thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.measured: Measured | None = None

    def resolve(self, comp, steer: Steer) -> Steer:
        """`steer` with `reject: auto` replaced by this composite's measured threshold."""
        if steer.reject != AUTO:
            return steer
        with self._lock:
            if self.measured is None:
                try:
                    self.measured = measure(comp)
                except NanoCommanderError:  # e.g. a context too small for the probes: the fixed rule
                    self.measured = Measured(CEILING, 0)
        return dataclasses.replace(steer, reject=self.measured.reject)
