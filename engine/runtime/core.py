"""The loaded part of a composite: its member contexts, their shared vocabulary and the scheduler.

A `Core` is what loading costs (weights from the pool, contexts, KV caches) and knows nothing of a
recipe's alpha, template or system prompt: those belong to the `Composite` that holds it
(engine/runtime/composite.py). An adapter family (engine/runtime/family.py) is one core held by
many composites, one per adapter, each binding its requests' slots to a tuned context.

The scheduler (engine/runtime/scheduler.py) calls back into the core only: `members`, `route`,
`hold_many` and `release`. Members of one batch run concurrently on the core's threads, each given
its share of the cores (`use_threads`).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from nanocommander.engine.decode.generation import Logits, Need, Steps
from nanocommander.engine.decode.plain_view import PLAIN
from nanocommander.engine.llama.embed import DEFAULT_EMBED_CTX, Embedder
from nanocommander.engine.llama.member import Hold, LoadedModel, Member
from nanocommander.engine.llama.rpc.devices import placement
from nanocommander.engine.llama.vocab import shared_vocab
from nanocommander.engine.request.decode_options import large_sequences
from nanocommander.engine.request.options import LoadOptions
from nanocommander.engine.request.recipe import ROLES, MemberSpec, Recipe
from nanocommander.engine.runtime.pool import ModelPool
from nanocommander.engine.runtime.scheduler import Item, Scheduler, Ticket
from nanocommander.errors import ModelLoadError


def member_path(spec: MemberSpec) -> Path:
    src = spec.source
    if src is None or src.path is None:
        where = f"hf: {src.hf}" if src and src.hf else f"ollama: {src.ollama}" if src else "?"
        raise ModelLoadError(
            f"member '{spec.role}' ({where}) is not a local file yet; run `nanocommander pull` first"
        )
    if not Path(src.path).is_file():
        raise ModelLoadError(f"member '{spec.role}': file not found: {src.path}")
    return Path(src.path)


def _context(
    recipe: Recipe, role: str, model: LoadedModel, load: LoadOptions, want_ctx: int, per_slot: int
) -> Member:
    """`role`'s context: `load.num_parallel` slots of n_ctx tokens (capped at the model's training
    context); the large one holds `per_slot` sequences per slot (the plain reading)."""
    spec = recipe.member(role)
    train_ctx = model.model.n_ctx_train() or want_ctx
    adapter = spec.adapter.path if spec.is_adapter and spec.adapter else None
    if spec.is_adapter and adapter is None:
        raise ModelLoadError("the tuned adapter is not a local file yet; run `nanocommander pull` first")
    return Member(
        role,
        model,
        n_ctx=min(spec.n_ctx or want_ctx, train_ctx),
        threads=spec.threads or load.num_thread,
        adapter=adapter,
        adapter_scale=spec.adapter_scale,
        n_batch=load.num_batch,
        n_seq=load.num_parallel * (per_slot if role == "large" else 1),
        deterministic=bool(load.deterministic),
    )


def embedder_for(recipe: Recipe, pool: ModelPool) -> Embedder:
    """The recipe's embedding context: its `embedding` GGUF, else the large member with the large
    member's own placement, so the pool shares its weights (and RPC servers)."""
    src = recipe.embedding
    path = src.path if src is not None else member_path(recipe.large)
    n_ctx = int(recipe.parameters.get("num_ctx") or DEFAULT_EMBED_CTX)
    threads = recipe.parameters.get("num_thread")
    where = {} if src is not None else {"gpu_layers": recipe.large.gpu_layers, "rpc": placement(recipe.large)}
    return Embedder(pool, path, n_ctx=n_ctx, threads=threads, **where)  # type: ignore[arg-type]


class Core:
    """Three member contexts (the tuned one may be an adapter on base's weights) ready to serve Holds."""

    def __init__(
        self,
        members: dict[str, Member],
        pool: ModelPool,
        acquired: Sequence[LoadedModel] = (),
        *,
        load_s: float = 0.0,
        concurrent: bool = True,
        workers: int = 3,
        max_queue: int | None = None,
    ):
        self.members, self.pool, self.load_s, self.concurrent = members, pool, load_s, concurrent
        self._acquired = list(acquired)  # released to the pool once each on close
        self.n_ctx = min(m.n_ctx for m in members.values())  # per sequence
        self.n_parallel = min(m.n_seq for m in members.values())  # slots
        self.views = members["large"].n_seq >= 2 * self.n_parallel  # a plain reading per slot
        self.deterministic = all(m.deterministic for m in members.values())  # engine/llama/determinism.py
        self.vocab = shared_vocab({role: m.model for role, m in members.items()})
        self._spaced: dict[int, int | None] = {}
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="member")
        self._members_lock = threading.Lock()  # one batch at a time on the member contexts
        chunk = min(m.n_batch for m in members.values())
        self.scheduler = Scheduler(self, self.n_parallel, chunk, max_queue)
        self.closed = False

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
        workers: int = 3,
        max_queue: int | None = None,
    ) -> Core:
        """Load `recipe`'s three members (sharing weights through `pool`) and check their vocabularies.

        Each member context holds `slots` sequences of `n_ctx` tokens (recipe `num_parallel`, else
        `n_parallel`, else 4): its KV cache is slots * n_ctx tokens (see `Member`). The large member
        holds a second sequence per slot for the plain reading (`views`; default: whether the
        recipe's steer uses `plain`). `workers` threads run members concurrently; past `max_queue` requests
        waiting for a slot, the scheduler refuses one more (ServerBusy).
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
                models[role] = pool.acquire(member_path(spec), spec.gpu_layers, placement(spec))
                acquired.append(models[role])
            tuned = recipe.tuned
            if tuned.is_adapter:
                models["tuned"] = models["base"]
            else:
                models["tuned"] = pool.acquire(member_path(tuned), tuned.gpu_layers, placement(tuned))
                acquired.append(models["tuned"])
            load = LoadOptions.from_parameters(recipe.parameters, n_parallel)
            per_slot = large_sequences(recipe.steer) if views is None else 1 + bool(views)
            for role in ROLES:
                members[role] = _context(recipe, role, models[role], load, n_ctx or load.num_ctx, per_slot)
            load_s = time.perf_counter() - t0
            return cls(
                members,
                pool,
                acquired,
                load_s=load_s,
                concurrent=concurrent,
                workers=workers,
                max_queue=max_queue,
            )
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
        for model in self._acquired:
            self.pool.release(model)

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

    # -- serving Holds (the scheduler's calls) ----------------------------------------------------

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

    def job(self, prompt: list[int], role: str, need: Callable[[int], Need]) -> Logits:
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
