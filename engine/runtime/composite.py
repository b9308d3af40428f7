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
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from nanocommander.engine.decode.fusion import fuse
from nanocommander.engine.decode.generation import Generation, Logits, Need, Plan, Steps
from nanocommander.engine.decode.logprobs import reader as logprob_reader
from nanocommander.engine.decode.logprobs import special_piece
from nanocommander.engine.decode.plain_view import PLAIN
from nanocommander.engine.decode.strategies import strategy_for
from nanocommander.engine.llama.member import Hold, LoadedModel, Member
from nanocommander.engine.llama.rpc.devices import placement
from nanocommander.engine.llama.sampler import Sampler
from nanocommander.engine.llama.vocab import shared_vocab
from nanocommander.engine.request.decode_options import (
    DEFAULT_SPECULATION,
    OFF,
    Speculation,
    Steer,
    large_sequences,
)
from nanocommander.engine.request.options import LoadOptions
from nanocommander.engine.request.recipe import ROLES, MemberSpec, Recipe
from nanocommander.engine.request.types import Chunk, GenerateRequest, Stats
from nanocommander.engine.runtime.pool import ModelPool
from nanocommander.engine.runtime.scheduler import Item, Scheduler, Ticket
from nanocommander.engine.text.chat_template import ChatTemplate, apply_defaults, fit_turns
from nanocommander.errors import ContextOverflow, InvalidRequest, ModelLoadError
from nanocommander.gguf_file import quantization_name

STREAM_AHEAD = 8  # rounds an async consumer may fall behind before its request pauses


def _member_path(spec: MemberSpec) -> Path:
    src = spec.source
    if src is None or src.path is None:
        where = f"hf: {src.hf}" if src and src.hf else f"ollama: {src.ollama}" if src else "?"
        raise ModelLoadError(
            f"member '{spec.role}' ({where}) is not a local file yet; run `nanocommander pull` first"
        )
    if not Path(src.path).is_file():
        raise ModelLoadError(f"member '{spec.role}': file not found: {src.path}")
    return Path(src.path)


class Composite:
    """large + alpha * (tuned - base), loaded and ready to generate."""

    def __init__(
        self,
        recipe: Recipe,
        members: dict[str, Member],
        pool: ModelPool,
        *,
        load_s: float,
        concurrent: bool = True,
    ):
        self.recipe, self.members, self.pool = recipe, members, pool
        self.load_s = load_s
        self.concurrent = concurrent
        self.n_ctx = min(m.n_ctx for m in members.values())  # per sequence
        self.n_parallel = min(m.n_seq for m in members.values())  # slots
        self.views = members["large"].n_seq >= 2 * self.n_parallel  # a plain reading per slot
        self.vocab = shared_vocab({role: m.model for role, m in members.items()})
        self._logits = np.empty(self.vocab.n_vocab, dtype=np.float32)
        self._spaced: dict[int, int | None] = {}
        self._executor = ThreadPoolExecutor(max_workers=3, thread_name_prefix="member")
        self._members_lock = threading.Lock()  # one batch at a time on the member contexts
        chunk = min(m.n_batch for m in members.values())
        self.scheduler = Scheduler(self, self.n_parallel, chunk)
        self.template = self._template()
        self.closed = False

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        recipe: Recipe,
        pool: ModelPool | None = None,
        *,
        concurrent: bool | None = None,
        n_ctx: int | None = None,
        n_parallel: int | None = None,
        views: bool | None = None,
    ) -> Composite:
        """Load the three members (sharing weights through `pool`) and check their vocabularies.

        Each member context holds `slots` sequences of `n_ctx` tokens (recipe `num_parallel`, else
        `n_parallel`, else 4): its KV cache is slots * n_ctx tokens (see `Member`). The large member
        holds a second sequence per slot for the plain reading (`views`; default: whether the
        recipe's steer uses `plain`).
        """
        t0 = time.perf_counter()
        pool = pool or ModelPool()
        if concurrent is None:
            concurrent = os.environ.get("NANOCOMMANDER_SERIAL", "") not in ("1", "true")
        acquired: list[LoadedModel] = []
        members: dict[str, Member] = {}
        try:
            models: dict[str, LoadedModel] = {}
            for role in ("large", "base"):
                spec = recipe.member(role)
                models[role] = pool.acquire(_member_path(spec), spec.gpu_layers, placement(spec))
                acquired.append(models[role])
            tuned = recipe.tuned
            if tuned.is_adapter:
                models["tuned"] = models["base"]
            else:
                models["tuned"] = pool.acquire(_member_path(tuned), tuned.gpu_layers, placement(tuned))
                acquired.append(models["tuned"])
            load = LoadOptions.from_parameters(recipe.parameters, n_parallel)
            want_ctx = n_ctx or load.num_ctx
            threads, n_batch, slots = load.num_thread, load.num_batch, load.num_parallel
            per_slot = large_sequences(recipe.steer) if views is None else 1 + bool(views)
            for role in ROLES:
                spec = recipe.member(role)
                model = models[role]
                train_ctx = model.model.n_ctx_train() or want_ctx
                adapter = spec.adapter.path if spec.is_adapter and spec.adapter else None
                if spec.is_adapter and adapter is None:
                    raise ModelLoadError(
                        "the tuned adapter is not a local file yet; run `nanocommander pull` first"
                    )
                members[role] = Member(
                    role,
                    model,
                    n_ctx=min(spec.n_ctx or want_ctx, train_ctx),
                    threads=spec.threads or threads,
                    adapter=adapter,
                    adapter_scale=spec.adapter_scale,
                    n_batch=n_batch,
                    n_seq=slots * (per_slot if role == "large" else 1),
                )
            return cls(recipe, members, pool, load_s=time.perf_counter() - t0, concurrent=concurrent)
        except BaseException:
            for member in members.values():
                member.close()
            for model in acquired:
                pool.release(model)
            raise

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.scheduler.stop()  # running requests end with a cancel chunk after the current round
        self._executor.shutdown(wait=True)
        for member in self.members.values():
            member.close()
        for role in ROLES:  # release once per acquire (the adapter member shares base's)
            if role == "tuned" and self.recipe.tuned.is_adapter:
                continue
            self.pool.release(self.members[role].model)

    # -- text ------------------------------------------------------------------------------

    @property
    def primary(self) -> LoadedModel:
        """The large model: its tokenizer and vocab serve every member (they are checked identical)."""
        return self.members["large"].model

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        add = add_bos and self.primary.model.add_bos_token()
        ids = self.primary.model.tokenize(text.encode("utf-8"), add, special)
        bos = self.primary.model.token_bos()
        if add and len(ids) > 1 and ids[0] == bos and ids[1] == bos:  # template already wrote BOS
            ids = ids[1:]
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return b"".join(self.primary.piece(t) for t in ids).decode("utf-8", errors="replace")

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

    def hold(self, need: Need) -> dict[str, np.ndarray]:
        """Serve one Need: each named member holds its tokens; members run concurrently on threads."""
        return {role: out[0] for role, out in self.hold_many({r: [h] for r, h in need.items()}).items()}

    def member_for(self, role: str, seq: int) -> Member:
        """The context serving `role` for the request in slot `seq`: one per role here; an adapter
        family (engine/runtime/family.py) gives each request the tuned context holding its adapter."""
        return self.members[role]

    def spaced(self, token: int) -> int | None:
        """The token for a leading space plus `token`'s text, where the vocabulary has one (cached)."""
        if token not in self._spaced:
            try:
                text = self.primary.piece(token).decode("utf-8")
            except UnicodeDecodeError:
                text = ""
            ids = self.tokenize(" " + text, add_bos=False, special=False) if text else []
            self._spaced[token] = ids[0] if len(ids) == 1 else None
        return self._spaced[token]

    def route(self, role: str, seq: int) -> tuple[Member, int]:
        """The context and sequence serving `role` for slot `seq`; the large model's plain reading
        (engine/decode/plain_view.py) is its context's second sequence for the slot."""
        if role == PLAIN and self.views:
            return self.members["large"], seq + self.n_parallel
        if role not in self.members:
            raise ValueError(f"unknown member {role!r}")
        return self.member_for(role, seq), seq

    def release(self, seq: int) -> None:
        """The request in slot `seq` has ended (the scheduler's call); a family unpins its tuned context."""

    def hold_many(self, holds: dict[str, list[Hold]]) -> dict[str, list[np.ndarray]]:
        """Each member serves its Holds (of one or many sequences) in one batch (the scheduler's call)."""
        jobs: dict[int, tuple[Member, list[tuple[str, int]]]] = {}  # context -> (it, [(role, index)])
        routed: dict[str, list[Hold]] = {}
        for role, role_holds in holds.items():
            for i, hold in enumerate(role_holds):
                member, seq = self.route(role, hold.seq)
                # the plain reading (another sequence of the slot) may start from the styled one's cache
                like = hold.seq if seq != hold.seq else None
                routed.setdefault(role, []).append(Hold(seq, hold.tokens, hold.n_logits, like))
                jobs.setdefault(id(member), (member, []))[1].append((role, i))
        share = len(jobs) if self.concurrent else 1  # concurrent members split the cores
        out: dict[str, list[np.ndarray]] = {role: [None] * len(h) for role, h in holds.items()}  # type: ignore[misc]
        with self._members_lock:
            for member, _ in jobs.values():
                member.use_threads(share)

            def run(member: Member, where: list[tuple[str, int]]) -> None:
                for (role, i), rows in zip(where, member.hold([routed[r][j] for r, j in where]), strict=True):
                    out[role][i] = rows

            if self.concurrent and len(jobs) > 1:
                futures = [self._executor.submit(run, *job) for job in jobs.values()]
                wait(futures)  # every member finishes before any error is raised: no context is left decoding
                for future in futures:
                    future.result()
            else:
                for job in jobs.values():
                    run(*job)
        return out

    def fused_logits(
        self, members: list[Member], alpha: float, tokens: list[int], extra_mask: np.ndarray | None = None
    ) -> np.ndarray:
        """Evaluate `tokens` on `members` (large first) and return the fused last-position logits."""
        logits = self._job(tokens, members[0].role, lambda seq: {m.role: Hold(seq, tokens) for m in members})
        first = logits[members[0].role][-1]
        base = logits["base"][-1] if "base" in logits else None
        tuned = logits["tuned"][-1] if "tuned" in logits else None
        mask = self.vocab.mask if extra_mask is None else extra_mask
        return fuse(first, base, tuned, alpha, self.vocab.n_vocab, mask, self._logits)

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
        stats = Stats(load_s=self.load_s)
        plan = self.plan(req)
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
            spaced=self.spaced,
        )
        return gen, strategy_for(gen)

    def generate(self, req: GenerateRequest, cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """Blocking generator of text chunks; the final chunk carries done_reason and stats.

        The request runs in the scheduler, batched with any others in flight, one round ahead of
        this iterator at most: setting `cancel` or closing the iterator stops it within one token.
        """
        gen, steps = self.start(req)
        inbox: queue.SimpleQueue[Item] = queue.SimpleQueue()
        ticket = self._ticket(gen, steps, inbox.put, max_ahead=1)
        ticket.external = cancel
        self.scheduler.submit(ticket)
        try:
            while True:
                item = inbox.get()
                self.scheduler.took(ticket)
                if isinstance(item, BaseException):
                    raise item
                yield from item
                if item and item[-1].done:
                    return
        finally:
            self.scheduler.cancel(ticket)

    async def stream(self, req: GenerateRequest) -> AsyncIterator[Chunk]:
        """`generate` for asyncio callers; leaving the loop early cancels the request within a round."""
        loop = asyncio.get_running_loop()
        gen, steps = await asyncio.to_thread(self.start, req)  # tokenizing a long prompt takes a while
        inbox: asyncio.Queue[Item] = asyncio.Queue()
        ticket = self._ticket(gen, steps, lambda item: loop.call_soon_threadsafe(inbox.put_nowait, item))
        self.scheduler.submit(ticket)
        try:
            while True:
                item = await inbox.get()
                self.scheduler.took(ticket)
                if isinstance(item, BaseException):
                    raise item
                for chunk in item:
                    yield chunk
                if item and item[-1].done:
                    return
        finally:
            self.scheduler.cancel(ticket)

    def generate_batch(self, reqs: Sequence[GenerateRequest]) -> list[list[Chunk]]:
        """Run requests together (admitted at once, as many in flight as there are slots) and return
        each one's chunks; for evaluation, benchmarks and tests. An error is raised once all end."""
        started: list[tuple[Generation, Steps]] = []
        try:
            for req in reqs:
                started.append(self.start(req))
        except BaseException:
            for gen, _ in started:
                gen.sampler.close()
            raise
        inbox: queue.SimpleQueue[tuple[int, Item]] = queue.SimpleQueue()
        tickets = [
            self._ticket(gen, steps, lambda item, i=i: inbox.put((i, item)), max_ahead=1 << 30)
            for i, (gen, steps) in enumerate(started)
        ]
        self.scheduler.submit(*tickets)
        out: list[list[Chunk]] = [[] for _ in reqs]
        errors: list[BaseException] = []
        left = len(tickets)
        try:
            while left:
                i, item = inbox.get()
                if isinstance(item, BaseException):
                    errors.append(item)
                else:
                    out[i].extend(item)
                left -= isinstance(item, BaseException) or bool(item and item[-1].done)
        finally:
            for ticket in tickets:
                self.scheduler.cancel(ticket)
        if errors:
            raise errors[0]
        return out

    def _ticket(self, gen: Generation, steps: Steps, put, max_ahead: int = STREAM_AHEAD) -> Ticket:
        def begin(seq: int) -> Steps:
            gen.seq = seq  # the strategy has not run yet: its first Need is built for this slot
            return steps

        return Ticket(begin, put, gen.tokens, gen.plan.roles[0], gen=gen, max_ahead=max_ahead)

    def _job(self, prompt: list[int], role: str, need: Callable[[int], Need]) -> Logits:
        """Serve one Need (built for the slot it gets) through the scheduler; its logits."""
        got: dict[str, Logits] = {}

        def steps(seq: int) -> Steps:
            got["logits"] = yield need(seq)

        inbox: queue.SimpleQueue[Item] = queue.SimpleQueue()
        ticket = Ticket(steps, inbox.put, list(prompt), role)
        self.scheduler.submit(ticket)
        item = inbox.get()
        if isinstance(item, BaseException):
            raise item
        return got["logits"]

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
                f = fused.astype(np.float64)
                f -= f.max()
                out[k] = f[ids[first + k]] - np.log(np.exp(f).sum())
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
        }
