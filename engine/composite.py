"""A loaded composite: three members, their shared vocabulary, a chat template, and generation.

Generation is layered: a strategy (engine/decoding.py) decides which members must hold
which tokens and commits sampled tokens to a `Generation` (engine/generation.py); the
composite serves those needs from its members (`hold`), `generate` drives one request,
and `stream` runs it on a worker thread for asyncio callers. The engine sees token ids and text only; it
knows nothing of any wire protocol.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from nanocommander.engine.chat_template import ChatTemplate, apply_defaults
from nanocommander.engine.decode_options import DEFAULT_SPECULATION, OFF, Speculation, Steer
from nanocommander.engine.decoding import strategy_for
from nanocommander.engine.fusion import fuse
from nanocommander.engine.generation import Generation, Need, Plan, Steps
from nanocommander.engine.logprobs import reader as logprob_reader
from nanocommander.engine.logprobs import special_piece
from nanocommander.engine.member import Hold, LoadedModel, Member
from nanocommander.engine.pool import ModelPool
from nanocommander.engine.rpc import placement
from nanocommander.engine.sampling import Sampler
from nanocommander.engine.types import Chunk, DoneReason, GenerateRequest, Stats
from nanocommander.engine.vocab import shared_vocab
from nanocommander.errors import ContextOverflow, InvalidRequest, ModelLoadError
from nanocommander.recipe import ROLES, MemberSpec, Recipe

DEFAULT_NUM_CTX = 4096
_END = object()


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
        self.n_ctx = min(m.n_ctx for m in members.values())
        self.vocab = shared_vocab({role: m.model for role, m in members.items()})
        self._logits = np.empty(self.vocab.n_vocab, dtype=np.float32)
        self._executor = ThreadPoolExecutor(max_workers=3, thread_name_prefix="member")
        self._gen_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._lock = threading.Lock()
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
    ) -> Composite:
        """Load the three members (sharing weights through `pool`) and check their vocabularies."""
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
            want_ctx = n_ctx or recipe.parameters.get("num_ctx") or DEFAULT_NUM_CTX
            threads = recipe.parameters.get("num_thread")
            n_batch = recipe.parameters.get("num_batch", 512)
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
        # A generator suspended between tokens holds the lock; it stops at its next step.
        locked = self._lock.acquire(timeout=10)
        try:
            self._executor.shutdown(wait=True)
            self._gen_executor.shutdown(wait=False)
            models = {id(m.model): m.model for m in self.members.values()}
            for member in self.members.values():
                member.close()
            for role in ROLES:  # release once per acquire (the adapter member shares base's)
                if role == "tuned" and self.recipe.tuned.is_adapter:
                    continue
                self.pool.release(self.members[role].model)
            models.clear()
        finally:
            if locked:
                self._lock.release()

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

    def chat_prompt(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[Any] | None = None,
        system: str | None = None,
        template: str | None = None,
        num_predict: int = 0,
    ) -> str:
        """Render a conversation; drop the oldest turns after the system prompt until it fits.

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
        turns = chat[len(head) :]
        while True:
            text = tmpl.render(head + turns, tools=tools)
            n = len(self.tokenize(text))
            if n < budget or len(turns) <= 1:
                if n >= budget:
                    raise ContextOverflow(n, max(num_predict, 0), self.n_ctx)
                return text
            turns = turns[1:]
            while turns and turns[0]["role"] != "user" and len(turns) > 1:  # start at a user turn
                turns = turns[1:]

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

    def hold_many(self, holds: dict[str, list[Hold]]) -> dict[str, list[np.ndarray]]:
        """Each member serves its Holds (of one or many sequences) in one batch."""
        members = [self.members[role] for role in holds]
        share = len(members) if self.concurrent else 1  # concurrent members split the cores
        for m in members:
            m.use_threads(share)
        if self.concurrent and len(members) > 1:
            futures = {m.role: self._executor.submit(m.hold, holds[m.role]) for m in members}
            return {role: f.result() for role, f in futures.items()}
        return {m.role: m.hold(holds[m.role]) for m in members}

    def fused_logits(
        self, members: list[Member], alpha: float, tokens: list[int], extra_mask: np.ndarray | None = None
    ) -> np.ndarray:
        """Evaluate `tokens` on `members` (large first) and return the fused last-position logits."""
        logits = self.hold({m.role: Hold(0, tokens) for m in members})
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
        )
        return gen, strategy_for(gen)

    def generate(self, req: GenerateRequest, cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """Blocking generator of text chunks; the final chunk carries done_reason and stats."""
        with self._lock:
            gen, steps = self.start(req)
            try:
                yield from self._drive(gen, steps, cancel)
            finally:
                steps.close()
                gen.sampler.close()

    def _drive(self, gen: Generation, steps: Steps, cancel: threading.Event | None) -> Iterator[Chunk]:
        """Serve one Generation's Needs until its strategy returns; yield its chunks as they come."""
        need = next(steps)
        first = True
        while True:
            if self.closed or (cancel is not None and cancel.is_set()):
                gen.reason = gen.reason or DoneReason.CANCEL
                break
            before = {role: self.members[role].stats.evaluated for role in need}
            logits = self.hold(need)
            if first:  # the prompt: count what the busiest member actually evaluated
                gen.prompt_done(max(self.members[r].stats.evaluated - n for r, n in before.items()))
                first = False
            try:
                need = steps.send(logits)
            except StopIteration:
                need = None
            yield from gen.drain()
            if need is None:
                break
        yield gen.finish()

    async def stream(self, req: GenerateRequest) -> AsyncIterator[Chunk]:
        """Run `generate` on a worker thread; leaving the loop early cancels within one token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def work() -> None:
            try:
                for chunk in self.generate(req, cancel):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as exc:  # handed to the consumer, re-raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        future = loop.run_in_executor(self._gen_executor, work)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            try:
                await asyncio.shield(future)
            except BaseException:  # noqa: S110 - the worker's own error was already delivered
                pass

    def score(
        self, token_ids: Sequence[int], start: int, *, alpha: float | None = None, member: str = "composite"
    ) -> np.ndarray:
        """Log-probabilities of token_ids[i] given token_ids[:i], for i >= start (for `eval`)."""
        req = GenerateRequest(prompt=list(token_ids), alpha=alpha, member=member)  # type: ignore[arg-type]
        plan = self.plan(req)
        ids = list(token_ids)
        first = max(start, 1)
        n = len(ids) - first
        out = np.empty(max(n, 0), dtype=np.float64)
        if n > 0:
            with self._lock:
                logits = self.hold({r: Hold(0, ids[:-1], n) for r in plan.roles})
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
                "quantization": _file_type(meta),
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


def _file_type(meta: dict[str, str]) -> str:
    try:
        import gguf

        return gguf.LlamaFileType(int(meta.get("general.file_type", "-1"))).name.removeprefix("MOSTLY_")
    except (ValueError, ImportError):
        return "unknown"
