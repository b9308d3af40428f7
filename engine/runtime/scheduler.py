"""Continuous batching: one scheduler thread per composite serves the Needs of many requests at once.

Every member context holds `n_seq` sequences, the slots. A request waits in `pending` until a slot
is free (admission is decided here alone: past `max_queue` waiting, one more is refused with
ServerBusy, a 503), then takes the free slot whose cache shares the most of its prompt (prefix reuse per slot).
Each round gathers the Need of every active request, groups the Holds by member, and serves each
member's Holds in one batch (`Core.hold_many`, members concurrently); each strategy is then
sent its logits and the chunks it committed go to its consumer. A long prompt is evaluated a chunk
per round, so streams already running keep producing; its strategy sees logits only once all of it
is in. Requests join between rounds and a finished, failed or cancelled one leaves its slot at once.

The scheduler knows nothing of strategies: it serves any Need (several positions of logits, only
some members, tokens that roll back), as long as its Holds name the request's slot.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nanocommander.engine.decode.generation import Generation, Logits, Need, Steps
from nanocommander.engine.decode.plain_view import PLAIN
from nanocommander.engine.llama.member import Hold
from nanocommander.engine.request.types import DoneReason
from nanocommander.errors import ModelLoadError, ServerBusy

if TYPE_CHECKING:
    from nanocommander.engine.runtime.core import Core

Item = Any  # what a ticket's consumer receives: a list of Chunks, an exception, or None (a job's end)


@dataclass(eq=False)
class Ticket:
    """One request (or one-Need job) inside the scheduler, from submission to its last delivery.

    `begin(seq)` gives its strategy once it has a slot; `put` hands items to the consumer (a
    round's chunks; the last list ends with the done chunk; an exception ends it too; jobs
    without a Generation end with None). A ticket takes part in a round only while its consumer
    has fewer than `max_ahead` deliveries still to take, so a stalled client pauses only itself.
    """

    begin: Callable[[int], Steps]
    put: Callable[[Item], None]
    prompt: list[int]  # to choose a slot by prefix
    role: str  # whose cache the prefix is matched against
    gen: Generation | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    max_ahead: int = 1
    seq: int = -1
    steps: Steps | None = None
    need: Need | None = None
    started: bool = False  # its strategy has had logits (the prompt is in)
    ahead: int = 0
    done: bool = False
    prompt_evaluated: dict[str, int] = field(default_factory=dict)
    external: threading.Event | None = None  # the caller's own cancel flag

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set() or (self.external is not None and self.external.is_set())


class Scheduler:
    """Admits tickets into slots and runs rounds on one thread (started on first use)."""

    def __init__(self, core: Core, n_seq: int, chunk: int, max_queue: int | None = None):
        self.comp, self.n_seq = core, n_seq
        self.max_queue = max_queue  # requests allowed to wait for a slot; one more is refused (503)
        self.chunk = max(1, chunk)  # new prompt tokens per member per round
        self._cv = threading.Condition()
        self._pending: deque[Ticket] = deque()
        self._slots: list[Ticket | None] = [None] * n_seq
        self._last_used = [0.0] * n_seq
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.rounds = 0  # rounds served, and the most requests served in one round (for tests, bench)
        self.widest = 0

    # -- consumer side (any thread) -------------------------------------------------------------

    def submit(self, *tickets: Ticket) -> None:
        """Queue tickets; tickets submitted together are admitted together (as slots allow)."""
        with self._cv:
            if self._stopping:
                for ticket in tickets:
                    self._close(ticket)
                raise ModelLoadError("model was unloaded")
            waiting = len(self._pending) + len(tickets) - self._slots.count(None)
            if self.max_queue is not None and waiting > self.max_queue:
                for ticket in tickets:
                    self._close(ticket)
                raise ServerBusy("server busy, please try again; the model's queue is full")
            self._pending.extend(tickets)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
                self._thread.start()
            self._cv.notify()

    def took(self, ticket: Ticket) -> None:
        """The consumer took one delivery: the ticket may run ahead again."""
        with self._cv:
            ticket.ahead -= 1
            self._cv.notify()

    def cancel(self, ticket: Ticket) -> None:
        if not ticket.done:
            ticket.cancel.set()
            with self._cv:
                self._cv.notify()

    def stop(self) -> None:
        """End every request (running ones with a cancel chunk, waiting ones with an error); wait."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def waiting(self) -> int:
        """Requests queued for a slot (for tests and /api/ps)."""
        with self._cv:
            return max(0, len(self._pending) - self._slots.count(None))

    def active(self) -> list[int]:
        """Slots in use (for tests and /api/ps)."""
        with self._cv:
            return [s for s, t in enumerate(self._slots) if t is not None]

    # -- the scheduler thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    admitted = self._admit()
                    if self._stopping:
                        break
                    live = [t for t in self._slots if t is not None]
                    if admitted or any(t.cancelled for t in live) or any(t.ahead < t.max_ahead for t in live):
                        break
                    self._cv.wait()
                stopping = self._stopping
            if stopping:
                self._shutdown()
                return
            for ticket in admitted:
                self._begin(ticket)
            for ticket in [t for t in self._slots if t is not None and t.cancelled]:
                self._end(ticket, reason=DoneReason.CANCEL)
            ready = [t for t in self._slots if t is not None and t.ahead < t.max_ahead and t.need is not None]
            if ready:
                self._round(ready)

    def _admit(self) -> list[Ticket]:
        """Give free slots to waiting tickets, oldest first (called with the lock held)."""
        admitted = []
        while self._pending:
            ticket = self._pending[0]
            if ticket.cancelled:
                self._pending.popleft()
                self._close(ticket)
                self._deliver(ticket, self._final(ticket, DoneReason.CANCEL))
                continue
            free = [s for s, t in enumerate(self._slots) if t is None]
            if not free:
                break
            self._pending.popleft()
            ticket.seq = self._choose(ticket, free)
            self._slots[ticket.seq] = ticket
            admitted.append(ticket)
        return admitted

    def _choose(self, ticket: Ticket, free: list[int]) -> int:
        """The free slot sharing the longest prefix with the prompt, if reusing it keeps at least half
        of what that slot holds; otherwise the least recently used one (empty slots first), so a new
        chat does not wipe the history another chat will come back to."""
        member = self.comp.members[ticket.role]
        shared = {s: member.kept(s, ticket.prompt) for s in free}
        best = max(free, key=lambda s: (shared[s], -self._last_used[s]))
        if shared[best] > 0 and 2 * shared[best] >= len(member.cached[best]):
            return best
        return min(free, key=lambda s: (self._last_used[s], s))

    def _begin(self, ticket: Ticket) -> None:
        try:
            ticket.steps = ticket.begin(ticket.seq)
            ticket.need = next(ticket.steps)
        except StopIteration:
            self._end(ticket)
        except Exception as exc:  # a strategy that fails to start ends only its own request
            self._end(ticket, error=exc)

    def _round(self, ready: list[Ticket]) -> None:
        holds: dict[str, list[Hold]] = {}
        parts: list[tuple[Ticket, bool, dict[str, int]]] = []  # ticket, whole Need?, its index per role
        for ticket, need, whole in self._plan(ready):
            index = {}
            for role, hold in need.items():
                index[role] = len(holds.setdefault(role, []))
                holds[role].append(hold)
            parts.append((ticket, whole, index))
        if not parts:
            return
        results = self._serve(holds, parts)
        self.rounds += 1
        self.widest = max(self.widest, len(parts))
        for ticket, whole, _ in parts:
            if whole and ticket in results:
                self._advance(ticket, results[ticket])

    def _plan(self, ready: list[Ticket]) -> list[tuple[Ticket, Need, bool]]:
        """This round's Holds: running requests' Needs whole; prompts, oldest first, share a budget of
        new tokens per member: `chunk` (num_batch) when nothing else runs, an eighth of it (at least
        16) while other requests are decoding, so their next tokens wait for a short round only."""
        out: list[tuple[Ticket, Need, bool]] = []
        prompts = []
        for ticket in ready:
            try:
                news = self._news(ticket)
            except Exception as exc:  # a malformed Need ends only its own request
                self._end(ticket, error=exc)
                continue
            if ticket.started:
                out.append((ticket, ticket.need, True))  # type: ignore[arg-type]
            else:
                prompts.append((ticket, news))
        budget = min(self.chunk, max(self.chunk // 8, 16)) if out else self.chunk
        left = dict.fromkeys((*self.comp.members, PLAIN), budget)
        for ticket, news in prompts:
            need = ticket.need
            pre = {r: n - max(1, need[r].n_logits) for r, n in news.items()}  # before the logits rows
            if all(pre[r] <= left[r] for r in need):
                out.append((ticket, need, True))
                for r, n in news.items():
                    left[r] -= n
                    ticket.prompt_evaluated[r] = ticket.prompt_evaluated.get(r, 0) + n
                continue
            part: Need = {}
            for r, hold in need.items():
                k = min(left[r], pre[r])
                if k > 0:  # evaluate k more tokens, stopping short of the rows whose logits are wanted
                    end = len(hold.tokens) - news[r] + k
                    part[r] = Hold(hold.seq, hold.tokens[:end], 1)
                    left[r] -= k
                    ticket.prompt_evaluated[r] = ticket.prompt_evaluated.get(r, 0) + k
            if part:
                out.append((ticket, part, False))
        return out

    def _news(self, ticket: Ticket) -> dict[str, int]:
        """Tokens each member must evaluate for the ticket's Need (checking that it names its slot)."""
        news = {}
        for role, hold in ticket.need.items():  # type: ignore[union-attr]
            if hold.seq != ticket.seq:
                raise RuntimeError(f"a strategy asked for sequence {hold.seq} from slot {ticket.seq}")
            member, seq = self.comp.route(role, ticket.seq)
            news[role] = len(hold.tokens) - member.kept(seq, hold.tokens, hold.n_logits)
        return news

    def _serve(
        self, holds: dict[str, list[Hold]], parts: list[tuple[Ticket, bool, dict[str, int]]]
    ) -> dict[Ticket, dict[str, np.ndarray]]:
        """One batch per member; if it fails, serve each request alone so only the culprit fails."""
        try:
            logits = self.comp.hold_many(holds)
            return {t: {role: logits[role][i] for role, i in index.items()} for t, _, index in parts}
        except Exception:  # noqa: S110 - isolated below; members keep their caches consistent
            pass
        out = {}
        for ticket, _, index in parts:
            try:
                logits = self.comp.hold_many({role: [holds[role][i]] for role, i in index.items()})
            except Exception as exc:
                self._end(ticket, error=exc)
                continue
            out[ticket] = {role: rows[0] for role, rows in logits.items()}
        return out

    def _advance(self, ticket: Ticket, logits: Logits) -> None:
        """Send a whole Need's logits to its strategy; deliver what it committed."""
        gen = ticket.gen
        if not ticket.started:
            ticket.started = True
            if gen is not None:
                gen.prompt_done(max(ticket.prompt_evaluated.values(), default=0))
        try:
            ticket.need = ticket.steps.send(logits)  # type: ignore[union-attr]
        except StopIteration:
            ticket.need = None
        except Exception as exc:
            self._end(ticket, error=exc)
            return
        if ticket.need is None:
            self._end(ticket)
        elif gen is not None:
            out = gen.drain()
            if out:
                self._deliver(ticket, out)

    def _end(
        self, ticket: Ticket, *, reason: DoneReason | None = None, error: BaseException | None = None
    ) -> None:
        """Finish a ticket: its last delivery, its slot freed, its strategy and sampler closed."""
        if ticket.done:
            return
        self._close(ticket)
        if 0 <= ticket.seq < self.n_seq and self._slots[ticket.seq] is ticket:
            self.comp.release(ticket.seq)  # what the composite bound to the slot (adapter families)
        with self._cv:
            if 0 <= ticket.seq < self.n_seq and self._slots[ticket.seq] is ticket:
                self._slots[ticket.seq] = None
                self._last_used[ticket.seq] = time.monotonic()
                self._cv.notify()
        self._deliver(ticket, error if error is not None else self._final(ticket, reason))

    def _final(self, ticket: Ticket, reason: DoneReason | None) -> Item:
        if ticket.gen is None:
            return ModelLoadError("model was unloaded") if reason == DoneReason.CANCEL else None
        if reason is not None:
            ticket.gen.reason = ticket.gen.reason or reason
        return [*ticket.gen.drain(), ticket.gen.finish()]

    def _close(self, ticket: Ticket) -> None:
        ticket.done = True
        if ticket.steps is not None:
            ticket.steps.close()
        if ticket.gen is not None:
            ticket.gen.sampler.close()

    def _deliver(self, ticket: Ticket, item: Item) -> None:
        with self._cv:
            ticket.ahead += 1
        try:
            ticket.put(item)
        except RuntimeError:  # the consumer's event loop is gone: nobody is listening any more
            ticket.cancel.set()

    def _shutdown(self) -> None:
        for ticket in [t for t in self._slots if t is not None]:
            self._end(ticket, reason=DoneReason.CANCEL)
        with self._cv:
            pending, self._pending = list(self._pending), deque()
        for ticket in pending:
            self._close(ticket)
            self._deliver(ticket, ModelLoadError("model was unloaded"))
