"""A loaded composite: three members, their shared vocabulary, a chat template, and generation.

Generation is layered: a strategy (engine/decode/strategies.py) decides which members must hold
which tokens and commits sampled tokens to a `Generation` (engine/decode/generation.py); the
composite's scheduler (engine/runtime/scheduler.py) serves the Needs of all requests in flight, one
batch per member per round, each request in its own sequence (slot) of every member context.
`generate` (blocking) and `stream` (asyncio) hand a request to the scheduler and relay its
chunks. The engine sees token ids and text only; it knows nothing of any wire protocol.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import numpy as np

from nanocommander.engine.decode.fusion import fuse
from nanocommander.engine.decode.generation import Generation, Logits, Need, Plan, Steps
from nanocommander.engine.decode.logprobs import reader as logprob_reader
from nanocommander.engine.decode.logprobs import special_piece
from nanocommander.engine.decode.softmax import log_softmax
from nanocommander.engine.decode.strategies import strategy_for
from nanocommander.engine.llama import determinism
from nanocommander.engine.llama.member import Hold, LoadedModel, Member
from nanocommander.engine.llama.sampler import Sampler
from nanocommander.engine.llama.vocab import SharedVocab
from nanocommander.engine.request.decode_options import (
    AUTO,
    DEFAULT_SPECULATION,
    OFF,
    Speculation,
    Steer,
)
from nanocommander.engine.request.recipe import ROLES, Recipe
from nanocommander.engine.request.types import Chunk, GenerateRequest, Stats
from nanocommander.engine.runtime.autoreject import AutoReject
from nanocommander.engine.runtime.core import Core
from nanocommander.engine.runtime.pool import ModelPool
from nanocommander.engine.runtime.scheduler import Item, Scheduler, Ticket
from nanocommander.engine.text.chat_template import ChatTemplate, apply_defaults, fit_turns
from nanocommander.errors import ContextOverflow, InvalidRequest, ModelLoadError
from nanocommander.gguf_file import quantization_name

STREAM_AHEAD = 8  # rounds an async consumer may fall behind before its request pauses


class Composite:
    """large + alpha * (tuned - base), loaded and ready to generate."""

    def __init__(self, recipe: Recipe, core: Core, *, load_s: float | None = None):
        self.recipe, self.core = recipe, core
        self.load_s = core.load_s if load_s is None else load_s
        self.template = self._template()
        self.closed = False
        self.auto_reject = AutoReject()  # `reject: auto`, measured on this composite's adapter

    @classmethod
    def load(cls, recipe: Recipe, pool: ModelPool | None = None, **options: Any) -> Composite:
        """Load `recipe`'s members into a core of its own (options: see `Core.load`)."""
        comp = cls(recipe, Core.load(recipe, pool, **options))
        comp.measure_steer()
        return comp

    def measure_steer(self) -> None:
        """Measure the recipe's `reject: auto` now, on fresh caches, so the threshold depends on the
        recipe alone and not on which requests came first (their cached prefixes change Q4_K_M
        numerics: docs/reproducibility.md); a request's own `reject: auto` is measured when it comes."""
        steer = self.recipe.steer
        if steer is not None and steer.reject == AUTO and self.recipe.alpha != 0.0:
            self.auto_reject.resolve(self, steer)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.core.close()

    # -- the core's parts, read through (one core may serve many composites: adapter families) ----

    @property
    def members(self) -> dict[str, Member]:
        return self.core.members

    @property
    def pool(self) -> ModelPool:
        return self.core.pool

    @property
    def vocab(self) -> SharedVocab:
        return self.core.vocab

    @property
    def scheduler(self) -> Scheduler:
        return self.core.scheduler

    @property
    def n_ctx(self) -> int:
        return self.core.n_ctx

    @property
    def n_parallel(self) -> int:
        return self.core.n_parallel

    @property
    def views(self) -> bool:
        return self.core.views

    @property
    def concurrent(self) -> bool:
        return self.core.concurrent

    @property
    def primary(self) -> LoadedModel:
        return self.core.primary

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.core.tokenize(text, add_bos, special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.core.detokenize(ids)

    def hold(self, need: Need) -> dict[str, np.ndarray]:
        return self.core.hold(need)

    def hold_many(self, holds: dict[str, list[Hold]]) -> dict[str, list[np.ndarray]]:
        return self.core.hold_many(holds)

    # -- text ------------------------------------------------------------------------------

    def _template(self) -> ChatTemplate:
        choice = self.recipe.template
        source_model = self.members[choice].model if choice in ROLES else self.primary
        source = choice if choice not in ROLES else source_model.metadata.get("tokenizer.chat_template")
        m = source_model.model
        bos = m.token_get_text(m.token_bos()) if m.token_bos() >= 0 else ""
        eos = m.token_get_text(m.token_eos()) if m.token_eos() >= 0 else ""
        return ChatTemplate(source, bos_token=bos, eos_token=eos)

    def chat_prompt(self, messages: Sequence[dict[str, Any]], **options: Any) -> str:
        """The rendered conversation alone (see `chat_tokens` for the options and the policy)."""
        return self.chat_tokens(messages, **options)[0]

    def chat_tokens(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[Any] | None = None,
        system: str | None = None,
        template: str | None = None,
        num_predict: int = 0,
    ) -> tuple[str, list[int]]:
        """The rendered conversation and its tokens, its oldest turns after the system prompt dropped
        until prompt + `num_predict` fit the context.

        The context policy: keep the system prompt and the newest turns; if even the newest turn
        alone does not fit with room for `num_predict` tokens, raise ContextOverflow.
        """
        chat = apply_defaults(messages, system=system or self.recipe.system, preset=self.recipe.messages)
        tmpl = (
            ChatTemplate(template, bos_token=self.template.bos_token, eos_token=self.template.eos_token)
            if template
            else self.template
        )
        budget = self.n_ctx - max(num_predict, 0)
        head = [m for m in chat[:1] if m["role"] == "system"]
        text, ids, _ = fit_turns(
            lambda msgs: tmpl.render(msgs, tools=tools), self.tokenize, head, chat[len(head) :], budget
        )
        if len(ids) >= budget:
            raise ContextOverflow(len(ids), max(num_predict, 0), self.n_ctx)
        return text, ids

    # -- generation ------------------------------------------------------------------------

    @property
    def default_speculation(self) -> Speculation:
        """Tuned drafts where a batch is nearly free (the large member on a GPU); off on a CPU, where
        verifying k drafted tokens costs about k single steps (README, Performance)."""
        return DEFAULT_SPECULATION if self.recipe.large.gpu_layers != 0 else OFF

    def plan(self, req: GenerateRequest) -> Plan:
        """Which members run for `req`, with what alpha, steering and drafting (request over recipe)."""
        mask = self.vocab.mask
        if req.ignore_eos and self.vocab.eog:
            mask = np.zeros(self.vocab.n_vocab, bool) if mask is None else mask.copy()
            mask[list(self.vocab.eog)] = True
        steer = req.steer or self.recipe.steer or Steer()
        if steer.views and not self.views and req.member == "composite":
            raise InvalidRequest(
                "steer.plain needs a second sequence per slot in the large model, and this model was "
                "loaded without one: set plain in its recipe's steer (e.g. `steer: {mode: recommended, "
                "plain: 0.3}`), or leave plain out (plain 0 needs no second sequence)"
            )
        spec = req.speculative or self.recipe.speculative or self.default_speculation
        if req.member != "composite":
            return Plan((req.member,), 0.0, self.vocab.n_vocab, mask, steer, spec)
        alpha = self.recipe.alpha if req.alpha is None else float(req.alpha)
        if not np.isfinite(alpha):
            raise InvalidRequest("alpha must be a finite number")
        if alpha == 0.0:  # the small models are not run at all
            return Plan(("large",), 0.0, self.vocab.n_vocab, mask, steer, spec)
        return Plan(ROLES, alpha, self.vocab.n_vocab, mask, steer, spec)

    def fused_logits(
        self, members: list[Member], alpha: float, tokens: list[int], extra_mask: np.ndarray | None = None
    ) -> np.ndarray:
        """Evaluate `tokens` on `members` (large first) and return the fused last-position logits."""
        logits = self._job(tokens, members[0].role, lambda seq: {m.role: Hold(seq, tokens) for m in members})
        first = logits[members[0].role][-1]
        base = logits["base"][-1] if "base" in logits else None
        tuned = logits["tuned"][-1] if "tuned" in logits else None
        mask = self.vocab.mask if extra_mask is None else extra_mask
        out = np.empty(self.vocab.n_vocab, dtype=np.float32)
        return fuse(first, base, tuned, alpha, self.vocab.n_vocab, mask, out)

    def _prompt_ids(self, req: GenerateRequest) -> list[int]:
        if isinstance(req.prompt, str):
            return self.tokenize(req.prompt, add_bos=req.add_bos)
        ids = [int(t) for t in req.prompt]
        if any(t < 0 or t >= self.vocab.n_vocab for t in ids):
            raise InvalidRequest(f"prompt token ids must be in [0, {self.vocab.n_vocab})")
        return ids

    def start(self, req: GenerateRequest, seq: int = 0) -> tuple[Generation, Steps]:
        """Check a request and set up its Generation and strategy (raises before any work is done)."""
        if self.closed:
            raise ModelLoadError("model was unloaded")
        stats = Stats()  # load_s stays 0: the server adds what this request waited for a load
        plan = self.plan(req)
        if plan.steered and plan.steer.reject == AUTO:  # measured once, at the first such request
            plan = dataclasses.replace(plan, steer=self.auto_reject.resolve(self, plan.steer))
        tokens = self._prompt_ids(req)
        if not tokens:
            raise InvalidRequest("empty prompt")
        stats.prompt_tokens = len(tokens)
        n_predict = req.num_predict if req.num_predict is not None and req.num_predict >= 0 else -1
        if len(tokens) >= self.n_ctx or (n_predict > 0 and len(tokens) + n_predict > self.n_ctx):
            raise ContextOverflow(len(tokens), max(n_predict, 0), self.n_ctx)
        piece = self.primary.piece
        lp = logprob_reader(req, plan.roles, self.vocab.n_vocab, plan.mask, lambda t: piece(t, True))
        shown = frozenset(i[0] for s in req.special_text if len(i := self.tokenize(s, add_bos=False)) == 1)
        sampler = Sampler(req.sampling, self.primary.vocab, self.vocab.n_vocab, self.n_ctx)
        sampler.accept_prompt(tokens)
        gen = Generation(
            req,
            plan,
            tokens,
            seq=seq,
            n_ctx=self.n_ctx,
            eog=frozenset(self.vocab.eog),
            piece=special_piece(piece, shown),
            sampler=sampler,
            stats=stats,
            logprobs=lp,
            spaced=self.core.spaced,
        )
        return gen, strategy_for(gen)

    def generate(self, req: GenerateRequest, cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """Blocking generator of text chunks; the final chunk carries done_reason and stats.

        The request runs in the scheduler, batched with any others in flight, one round ahead of
        this iterator at most: setting `cancel` or closing the iterator stops it within one token.
        """
        for _, chunks in self._relay([self.start(req)], max_ahead=1, cancel=cancel):
            yield from chunks

    async def stream(self, req: GenerateRequest) -> AsyncIterator[Chunk]:
        """`generate` for asyncio callers; leaving the loop early cancels the request within a round."""
        async for _, chunk in self.stream_many([req]):
            yield chunk

    async def stream_many(self, reqs: Sequence[GenerateRequest]) -> AsyncIterator[tuple[int, Chunk]]:
        """Requests admitted together, so they run as one batch (as slots allow): (request index,
        chunk) as they come; `_relay`'s asyncio twin. An error ends them all; so does leaving early."""
        loop = asyncio.get_running_loop()
        started = await asyncio.to_thread(self._start_all, reqs)  # tokenizing long prompts takes a while
        inbox: asyncio.Queue[tuple[int, Item]] = asyncio.Queue()
        tickets = [
            self._ticket(gen, steps, lambda item, i=i: loop.call_soon_threadsafe(inbox.put_nowait, (i, item)))
            for i, (gen, steps) in enumerate(started)
        ]
        self.scheduler.submit(*tickets)
        left = len(tickets)
        try:
            while left:
                i, item = await inbox.get()
                self.scheduler.took(tickets[i])
                if isinstance(item, BaseException):
                    raise item
                for chunk in item:
                    yield i, chunk
                left -= bool(item and item[-1].done)
        finally:
            for ticket in tickets:
                self.scheduler.cancel(ticket)

    def _start_all(self, reqs: Sequence[GenerateRequest]) -> list[tuple[Generation, Steps]]:
        """`start` every request, or none: one refused closes the samplers of those already set up."""
        started: list[tuple[Generation, Steps]] = []
        try:
            for req in reqs:
                started.append(self.start(req))
        except BaseException:
            for gen, _ in started:
                gen.sampler.close()
            raise
        return started

    def generate_batch(self, reqs: Sequence[GenerateRequest]) -> list[list[Chunk]]:
        """Run requests together (admitted at once, as many in flight as there are slots) and return
        each one's chunks; for evaluation, benchmarks and tests. An error is raised once all end."""
        out: list[list[Chunk]] = [[] for _ in reqs]
        for i, chunks in self._relay(self._start_all(reqs), max_ahead=1 << 30):
            out[i].extend(chunks)
        return out

    def _relay(
        self,
        started: Sequence[tuple[Generation, Steps]],
        max_ahead: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[tuple[int, list[Chunk]]]:
        """The blocking relay loop: submit the requests together, hand on each delivery as
        (request index, chunks) until every request is done, then raise the first error any had.
        Leaving early (or `cancel`) cancels them all within a round. `stream` is its asyncio twin."""
        inbox: queue.SimpleQueue[tuple[int, Item]] = queue.SimpleQueue()
        tickets = [
            self._ticket(gen, steps, lambda item, i=i: inbox.put((i, item)), max_ahead=max_ahead)
            for i, (gen, steps) in enumerate(started)
        ]
        for ticket in tickets:
            ticket.external = cancel
        self.scheduler.submit(*tickets)
        errors: list[BaseException] = []
        left = len(tickets)
        try:
            while left:
                i, item = inbox.get()
                self.scheduler.took(tickets[i])
                if isinstance(item, BaseException):
                    errors.append(item)
                    left -= 1
                    continue
                yield i, item
                left -= bool(item and item[-1].done)
        finally:
            for ticket in tickets:
                self.scheduler.cancel(ticket)
        if errors:
            raise errors[0]

    def bind(self, seq: int) -> None:
        """A request of this composite got slot `seq` (the scheduler's thread, before its first Need):
        nothing to do here; an adapter family's composite binds the slot to a tuned context."""

    def _ticket(self, gen: Generation, steps: Steps, put, max_ahead: int = STREAM_AHEAD) -> Ticket:
        def begin(seq: int) -> Steps:
            gen.seq = seq  # the strategy has not run yet: its first Need is built for this slot
            if "tuned" in gen.plan.roles:
                self.bind(seq)
            return steps

        return Ticket(begin, put, gen.tokens, gen.plan.roles[0], gen=gen, max_ahead=max_ahead)

    def _job(self, prompt: list[int], role: str, need: Callable[[int], Need]) -> Logits:
        def bound(seq: int) -> Need:
            self.bind(seq)
            return need(seq)

        return self.core.job(prompt, role, bound)

    def forced(self, ids: Sequence[int], n: int, roles: Sequence[str]) -> Logits:
        """Each role's logits at the last `n` positions of `ids[:-1]` (predicting ids[-n:]), teacher-
        forced as one scheduler job, so the request's slot is bound (an adapter family's tuned
        context) like any generation's."""
        prefix = list(ids[:-1])
        return self._job(prefix, roles[0], lambda seq: {r: Hold(seq, prefix, n) for r in roles})

    def score(
        self, token_ids: Sequence[int], start: int, *, alpha: float | None = None, member: str = "composite"
    ) -> np.ndarray:
        """Log-probabilities of token_ids[i] given token_ids[:i], for i >= start (for `eval`)."""
        if self.closed:
            raise ModelLoadError("model was unloaded")
        req = GenerateRequest(prompt=list(token_ids), alpha=alpha, member=member)  # type: ignore[arg-type]
        plan = self.plan(req)
        ids = list(token_ids)
        first = max(start, 1)
        n = len(ids) - first
        out = np.empty(max(n, 0), dtype=np.float64)
        if n > 0:
            logits = self._job(
                ids[:-1], plan.roles[0], lambda seq: {r: Hold(seq, ids[:-1], n) for r in plan.roles}
            )
            row = np.empty(plan.n_vocab, dtype=np.float32)
            for k in range(n):
                base = logits["base"][k] if "base" in logits else None
                tuned = logits["tuned"][k] if "tuned" in logits else None
                fused = fuse(logits[plan.roles[0]][k], base, tuned, plan.alpha, plan.n_vocab, None, row)
                out[k] = log_softmax(fused)[ids[first + k]]
        return out

    # -- description -----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        members = {}
        for role, m in self.members.items():
            meta = m.model.metadata
            spec = self.recipe.member(role)
            members[role] = {
                "path": str(m.model.path),
                "architecture": meta.get("general.architecture", ""),
                "parameter_count": int(m.model.model.n_params()),
                "quantization": quantization_name(meta.get("general.file_type", "-1")),
                "size": int(m.model.model.size()),
                "context_length": int(m.model.model.n_ctx_train()),
                "adapter": str(m.adapter_path) if m.adapter_path else None,
                "source": spec.to_dict(),
            }
        return {
            "alpha": self.recipe.alpha,
            "n_ctx": self.n_ctx,
            "n_vocab": self.vocab.n_vocab,
            "members": members,
            "deterministic": determinism.describe(self.core.deterministic),
            "auto_reject": self.auto_reject.measured.to_dict() if self.auto_reject.measured else None,
        }
