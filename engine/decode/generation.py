"""One request in flight: its tokens, sampler, output text and stats, and how its steps are written.

A decoding strategy (engine/decode/strategies.py) is a generator that, for one `Generation`, yields a `Need`
(which members must hold which tokens, and how many positions of logits it wants back) and is sent
the members' logits in return. It samples and calls `Generation.accept` for every token it commits.
The driver that serves Needs (one request, or many batched together) knows nothing of strategies,
and strategies know nothing of batching: a Need names its sequence id, so the driver can put the
Needs of several requests into one llama_decode batch per member.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass

import numpy as np

from nanocommander.engine.decode.fusion import fuse
from nanocommander.engine.decode.logprobs import LogprobReader
from nanocommander.engine.decode.provenance import FUSED
from nanocommander.engine.decode.provenance import reader as provenance_reader
from nanocommander.engine.llama.member import Hold
from nanocommander.engine.llama.sampler import Sampler
from nanocommander.engine.request.decode_options import OFF, Speculation, Steer
from nanocommander.engine.request.types import Chunk, DoneReason, GenerateRequest, Stats
from nanocommander.engine.text.stream import TextStream

Need = dict[str, Hold]  # member role -> what that member must hold for this sequence
Logits = Mapping[str, np.ndarray]  # member role -> (n_logits, n_vocab) logits, the last positions
Steps = Generator[Need, Logits, None]


@dataclass(frozen=True)
class Plan:
    """How a request is decoded: which members take part and with what weight (no state)."""

    roles: tuple[str, ...]  # ("large",) or ("large", "base", "tuned"), or one member alone
    alpha: float
    n_vocab: int
    mask: np.ndarray | None  # ids never to sample (padding, banned end tokens)
    steer: Steer = Steer()  # where the delta applies (engine/decode/steering.py)
    spec: Speculation = OFF  # who drafts tokens to verify in one batch (engine/decode/speculative.py)

    @property
    def steered(self) -> bool:
        """Whether the small models' delta takes part at all (the composite with alpha != 0)."""
        return len(self.roles) == 3 and self.alpha != 0.0


class Generation:
    """Per-request state shared by every strategy: committed tokens, sampler, text, stop rules, stats."""

    def __init__(
        self,
        req: GenerateRequest,
        plan: Plan,
        prompt: list[int],
        *,
        seq: int,
        n_ctx: int,
        eog: frozenset[int],
        piece: Callable[[int], bytes],
        sampler: Sampler,
        stats: Stats,
        logprobs: LogprobReader | None = None,
        spaced: Callable[[int], int | None] = lambda token: None,
    ):
        self.req, self.plan, self.seq, self.n_ctx = req, plan, seq, n_ctx
        self.tokens = list(prompt)
        self.n_prompt = len(prompt)
        self.eog, self.piece, self.sampler, self.stats = eog, piece, sampler, stats
        self.spaced = spaced  # the token for the same text with a leading space (engine/decode/plain_view.py)
        self.n_predict = req.num_predict if req.num_predict is not None and req.num_predict >= 0 else -1
        self.text = TextStream(req.stop, trim_stop=req.trim_stop)
        self.out: list[Chunk] = []
        self.reason: DoneReason | None = None
        self._held: list[int] = []  # tokens whose text is still held back (partial UTF-8, stop prefix)
        self._fused = np.empty(plan.n_vocab, dtype=np.float32)
        self.t_start = time.perf_counter()
        self.t_first: float | None = None  # when the prompt's logits arrived
        self.logprobs = logprobs
        self._last: tuple[np.ndarray, Logits, int] | None = None  # the latest fuse: what accept() reads
        self._by = FUSED  # what the latest distribution came from: FUSED or one member's role
        self.provenance = provenance_reader(req, plan.n_vocab, plan.mask, piece)  # None unless asked

    # -- what strategies use -----------------------------------------------------------------

    def hold(self, tokens: list[int] | None = None, n_logits: int = 1) -> Hold:
        return Hold(self.seq, self.tokens if tokens is None else tokens, n_logits)

    def need(
        self, roles: tuple[str, ...] | None = None, tokens: list[int] | None = None, n_logits: int = 1
    ) -> Need:
        """Every member in `roles` (default: the plan's) holds `tokens` (default: the committed ones)."""
        return {r: self.hold(tokens, n_logits) for r in roles or self.plan.roles}

    def fuse(self, logits: Logits, row: int = -1, out: np.ndarray | None = None) -> np.ndarray:
        """large + alpha * (tuned - base) at one returned position; an owned buffer, reused per call."""
        p = self.plan
        base = logits["base"][row] if "base" in logits else None
        tuned = logits["tuned"][row] if "tuned" in logits else None
        first = logits[p.roles[0]][row]
        fused = fuse(first, base, tuned, p.alpha, p.n_vocab, p.mask, self._fused if out is None else out)
        self._last = (fused, logits, row)
        self._by = FUSED if p.steered else p.roles[0]
        return fused

    def alone(self, logits: Logits, role: str, row: int = -1) -> np.ndarray:
        """One member's logits as the distribution to sample (a closed gate, a nudge); like `fuse`."""
        p = self.plan
        fused = fuse(logits[role][row], None, None, 0.0, p.n_vocab, p.mask, self._fused)
        self._last = (fused, logits, row)
        self._by = role
        return fused

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt

    def room(self) -> int:
        """How many more tokens may be committed (num_predict and the context both bound it)."""
        left = self.n_ctx - len(self.tokens)
        if self.n_predict > 0:
            left = min(left, self.n_predict - self.stats.eval_count)
        return max(left, 0)

    @property
    def finished(self) -> bool:
        return self.reason is not None

    def accept(self, token: int, steered: bool = False) -> bool:
        """Commit one sampled token; False once the request is finished (end token, stop, limit).

        `steered`: the small models' delta took part in choosing it (counted in the stats).
        """
        if self.finished:
            return False
        self.sampler.accept(token)
        if token in self.eog and not self.req.ignore_eos:
            self.reason = DoneReason.STOP
            return False
        self.stats.eval_count += 1
        self.stats.steered += steered
        if self._last is not None and (
            self.logprobs is not None or self.provenance is not None
        ):  # sampled from the latest fuse()
            fused, logits, row = self._last
            rows = {r: v[row] for r, v in logits.items()}
            if self.logprobs is not None:
                self.logprobs.add(token, fused, rows)
            if self.provenance is not None:
                self.provenance.add(token, fused, rows, self._by)
        self.tokens.append(token)
        self._held.append(token)
        piece, stopped = self.text.push(self.piece(token))
        if piece:
            self.out.append(
                Chunk(piece, self._held, logprobs=self._take_logprobs(), provenance=self._take_provenance())
            )
            self._held = []
        if stopped:
            self.reason = DoneReason.STOP
        elif self.stats.eval_count == self.n_predict or len(self.tokens) >= self.n_ctx:
            self.reason = DoneReason.LENGTH
        return not self.finished

    # -- what drivers use ---------------------------------------------------------------------

    def prompt_done(self, evaluated: int) -> None:
        self.stats.prompt_eval_tokens = evaluated
        self.t_first = time.perf_counter()
        self.stats.prompt_eval_s = self.t_first - self.t_start

    def drain(self) -> list[Chunk]:
        out, self.out = self.out, []
        return out

    def finish(self, reason: DoneReason | None = None) -> Chunk:
        """The final chunk: remaining text (unless a stop string ended it), reason and stats."""
        if self.reason is None:
            self.reason = reason or DoneReason.LENGTH
        tail = self.text.flush() if not self.text.stopped else ""
        now = time.perf_counter()
        self.stats.eval_s = now - (self.t_first or now)
        self.stats.total_s = now - self.t_start
        return Chunk(
            tail,
            self._held,
            done=True,
            done_reason=self.reason,
            stats=self.stats,
            logprobs=self._take_logprobs(),
            provenance=self._take_provenance(),
        )

    def _take_logprobs(self) -> list | None:
        return self.logprobs.take() if self.logprobs else None

    def _take_provenance(self) -> list | None:
        return self.provenance.take() if self.provenance else None
