"""Teacher forcing through the engine's own strategies: the distribution a request samples from.

Why: a sweep's style loss must be the behaviour a user gets, not a copy of the steering rules that
can drift from engine/decode/steering.py. So each setting's score comes from driving the engine's
strategy generator for that setting (`Composite.start`, the same call a user's request goes
through) with a `ForcingSampler` in place of the request's sampler: it records the distribution
the strategy asks it to sample from and returns the reference token, so the strategy commits the
reference reply and every gate, nudge and plain reading decides exactly as it would have had the
model written that reply itself.

Economy: the members evaluate each example once (`Teacher`: one Hold of the whole example per
member) and the strategies' Needs are served from those logits wherever they ask for a prefix of
the example; anything else (the large model's plain reading, which leaves sentences out) is
evaluated by the members for real.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from nanocommander.engine.decode.generation import Logits, Need, Steps
from nanocommander.engine.decode.plain_view import PLAIN
from nanocommander.engine.decode.softmax import log_softmax
from nanocommander.engine.llama.member import Hold
from nanocommander.engine.request.decode_options import OFF
from nanocommander.engine.request.types import GenerateRequest

if TYPE_CHECKING:
    from nanocommander.engine.runtime.composite import Composite


class ForcingSampler:
    """Stands in for a request's sampler: remembers log p(reference token) under the distribution
    it was last asked to sample from, and returns the reference token.

    A strategy may ask more than once for one position (a nudged word that ends there hands the
    position back to the large model); the distribution that counts is the last one before the
    token is committed (`accept`), which is the one the token would have been sampled from.
    Every draw is the reference token, so a reply the engine did not write is scored along the one
    path on which it would have: where the tuned model's draw inside a nudged word is the
    reference token and that token starts no new word, the word goes on (a real draw of a word
    start would have handed the step back to the large model instead).
    """

    exact = True  # what speculation checks (requests here run without it)
    greedy = True

    def __init__(self, reference: Sequence[int]):
        self.reference = list(reference)
        self.logprobs: list[float] = []
        self._pending: float | None = None

    def sample(self, logits: np.ndarray) -> int:
        token = self.reference[len(self.logprobs)]
        self._pending = float(log_softmax(logits)[token])  # the raw distribution, as logprobs read it
        return token

    def accept(self, token: int) -> None:
        want = self.reference[len(self.logprobs)]
        if token != want or self._pending is None:
            raise RuntimeError(f"forced token {want} but the strategy committed {token}")
        self.logprobs.append(self._pending)
        self._pending = None

    def accept_prompt(self, tokens: list[int]) -> None:
        """Nothing to do: no penalties are applied to a distribution that is only read."""

    def close(self) -> None:
        """Nothing to free (the request's own llama.cpp sampler is closed when this one replaces it)."""


class Teacher:
    """One example's member logits from one pass each, serving the Needs that ask for its prefixes."""

    def __init__(self, comp: Composite, ids: Sequence[int], start: int, roles: Iterable[str]):
        self.comp, self.ids, self.start = comp, list(ids), start
        n = len(self.ids) - start
        # row k: the logits after ids[:start + k], i.e. the distribution of ids[start + k]
        wanted = sorted(set(roles))
        self.rows: dict[str, np.ndarray] = (
            comp.hold({r: Hold(0, self.ids[:-1], n) for r in wanted}) if n > 0 and wanted else {}
        )
        self.served = self.evaluated = 0  # Needs served from the pass; Holds the members evaluated

    def serve(self, need: Need) -> Logits:
        out: dict[str, np.ndarray] = {}
        rest: Need = {}
        for role, hold in need.items():
            rows = self._rows(role, hold)
            if rows is None:
                rest[role] = hold
            else:
                out[role] = rows
        self.served += len(out)
        if rest:  # e.g. the plain reading: not a prefix of the example
            self.evaluated += len(rest)
            out.update(self.comp.hold(rest))
        return out

    def _rows(self, role: str, hold: Hold) -> np.ndarray | None:
        """Rows of the pass for a Hold of a prefix of the example: after ids[:L], the distribution of
        ids[L], at row L - start; None where the pass does not have them."""
        rows = self.rows.get("large" if role == PLAIN else role)
        tokens = hold.tokens if isinstance(hold.tokens, list) else list(hold.tokens)
        last = len(tokens) - self.start
        first = last - hold.n_logits + 1
        if rows is None or first < 0 or last >= len(rows) or tokens != self.ids[: len(tokens)]:
            return None
        return rows[first : last + 1]


def drive(steps: Steps, serve: Callable[[Need], Logits]) -> None:
    """Run a strategy to its end, serving each Need it yields."""
    need = next(steps)
    while True:
        try:
            need = steps.send(serve(need))
        except StopIteration:
            return


def logprobs(
    comp: Composite, teacher: Teacher, template: GenerateRequest, begin: int, end: int
) -> list[float]:
    """log p(ids[i] | ids[:i]) for begin <= i < end under the request `template` (its alpha, member,
    steer): each from the distribution the engine's strategy for that request samples from.

    The reply is one request from `begin`; where it ends early (an end-of-turn token inside the
    span, as a chat template's trailing newline follows it) the rest is a new request from there.
    """
    out: list[float] = []
    pos = begin
    while pos < end:
        req = replace(template, prompt=teacher.ids[:pos], num_predict=end - pos, speculative=OFF)
        gen, steps = comp.start(req)
        gen.sampler.close()
        forcing = ForcingSampler(teacher.ids[pos:end])
        gen.sampler = forcing  # type: ignore[assignment]
        drive(steps, teacher.serve)
        if not forcing.logprobs:
            raise RuntimeError(f"the strategy committed no token at position {pos}")
        out += forcing.logprobs
        pos += len(forcing.logprobs)
    return out


def spans(mask: Sequence[bool]) -> list[tuple[int, int]]:
    """The runs of learned positions (each an assistant reply): [(begin, end), ...], never position 0."""
    out: list[tuple[int, int]] = []
    begin = None
    for i, m in enumerate(list(mask) + [False]):
        m = m and i > 0
        if m and begin is None:
            begin = i
        elif not m and begin is not None:
            out.append((begin, i))
            begin = None
    return out
