"""Continuous batching: requests batched together give what they give alone, and slots behave.

Exactness on a CPU: llama.cpp's F32 matrix kernels sum in a different order for a batch of several
sequences than for one (~1e-6 per step, and an f16 KV cache can round that up to ~1e-3), so the
F32 fixtures are compared on greedy tokens; Q8_0 copies of the same models use kernels that do not
depend on the batch, so there the logits themselves must be bit-identical.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time

import llama_cpp
import numpy as np
import pytest
from engine_helpers import GREEDY, recipe_over

from nanocommander.engine.llama.member import Hold, LoadedModel, Member
from nanocommander.engine.request.types import DoneReason, GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.engine.runtime.pool import ModelPool
from nanocommander.engine.runtime.scheduler import Ticket

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
MIXED = [  # different prompt lengths, lengths of output, alphas and members
    GenerateRequest(prompt=CHAT.format("tell me a story"), sampling=GREEDY, num_predict=24),
    GenerateRequest(
        prompt=CHAT.format("a much longer question " * 6), sampling=GREEDY, num_predict=40, alpha=0.5
    ),
    GenerateRequest(prompt=CHAT.format("hi"), sampling=GREEDY, num_predict=12, member="large"),
    GenerateRequest(
        prompt=CHAT.format("what now?"), sampling=GREEDY, num_predict=30, alpha=0.0, ignore_eos=True
    ),
]


def ids(chunks) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def quantize(src, dst, ftype: int = 7):  # 7: LLAMA_FTYPE_MOSTLY_Q8_0
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    return dst


@pytest.fixture(scope="module")
def tiny_q8(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("q8")
    return {**tiny, **{r: quantize(tiny[r], folder / f"{r}.gguf") for r in ("large", "base", "tuned")}}


@pytest.fixture(scope="module")
def q8(tiny_q8):
    comp = Composite.load(recipe_over(tiny_q8, extra="parameters: {num_ctx: 512}\n"))
    yield comp
    comp.close()


def test_greedy_output_alone_equals_batched_with_three_others(composite):
    assert composite.n_parallel == 4
    alone = [ids(composite.generate(req)) for req in MIXED]
    rounds, composite.scheduler.widest = composite.scheduler.rounds, 0
    together = [ids(chunks) for chunks in composite.generate_batch(MIXED)]
    assert together == alone
    assert composite.scheduler.widest == 4  # all four really shared rounds
    assert composite.scheduler.rounds - rounds < sum(len(a) for a in alone)


def test_q8_member_logits_are_bit_identical_in_a_batch(tiny_q8):
    """The kernels of quantized weights do not depend on the batch: one sequence's logits are the
    same bits whether it is decoded alone or beside three others (prompts and decode steps)."""
    model = LoadedModel(tiny_q8["large"])
    alone, batched = Member("large", model, n_ctx=256, n_seq=1), Member("large", model, n_ctx=256, n_seq=4)
    try:
        rng = np.random.default_rng(0)
        seqs = [list(map(int, rng.integers(0, 250, size=n))) for n in (20, 7, 33, 12)]
        for step in range(8):
            outs = batched.hold([Hold(s, seqs[s]) for s in range(4)])
            for s in range(4):
                alone.reset()
                assert np.array_equal(outs[s], alone.hold([Hold(0, seqs[s])])[0]), (step, s)
                seqs[s].append(int(np.argmax(outs[s][-1])))
    finally:
        alone.close()
        batched.close()
        model.close()


def test_q8_batched_equals_alone_including_a_chunked_prompt(tiny_q8):
    """With a small chunk a long prompt takes many rounds next to running streams; nothing changes."""
    comp = Composite.load(recipe_over(tiny_q8, extra="parameters: {num_ctx: 512, num_batch: 16}\n"))
    try:
        reqs = [*MIXED, GenerateRequest(prompt=CHAT.format("long " * 60), sampling=GREEDY, num_predict=8)]
        alone = [ids(comp.generate(req)) for req in reqs]
        assert [ids(c) for c in comp.generate_batch(reqs)] == alone
        assert [ids(c) for c in comp.generate_batch(reqs[::-1])] == alone[::-1]
    finally:
        comp.close()


def test_cancel_mid_stream_frees_the_slot_and_the_others_continue(composite):
    others = [
        GenerateRequest(prompt=CHAT.format(f"story {i}"), sampling=GREEDY, num_predict=150, ignore_eos=True)
        for i in range(2)
    ]
    alone = [ids(composite.generate(req)) for req in others]
    long = GenerateRequest(prompt=CHAT.format("go on"), sampling=GREEDY, num_predict=400, ignore_eos=True)

    async def main():
        victim = composite.stream(long)
        got = 0
        async for chunk in victim:
            got += len(chunk.token_ids)
            if got >= 3:
                break
        tasks = [asyncio.create_task(collect(composite.stream(r))) for r in others]
        t0 = time.perf_counter()
        while len(composite.scheduler.active()) < 3 and time.perf_counter() - t0 < 5:
            await asyncio.sleep(0.001)
        assert len(composite.scheduler.active()) == 3
        await victim.aclose()  # the client hangs up
        t0 = time.perf_counter()
        while len(composite.scheduler.active()) > 2 and time.perf_counter() - t0 < 5:
            await asyncio.sleep(0.001)
        freed = time.perf_counter() - t0
        return freed, await asyncio.gather(*tasks)

    freed, results = asyncio.run(asyncio.wait_for(main(), 60))
    assert freed < 0.5
    assert [ids(r) for r in results] == alone
    assert all(r[-1].done_reason != DoneReason.CANCEL for r in results)


async def collect(agen):
    return [c async for c in agen]


def test_turn_two_evaluates_only_its_new_tokens_while_another_chat_runs(composite):
    turn1 = composite.tokenize(CHAT.format("hello there, how are you"))
    other = GenerateRequest(
        prompt=CHAT.format("meanwhile, elsewhere " * 4), sampling=GREEDY, num_predict=20, ignore_eos=True
    )
    first = composite.generate_batch(
        [GenerateRequest(prompt=turn1, sampling=GREEDY, num_predict=6, ignore_eos=True)]
    )
    reply = ids(first[0])
    turn2 = turn1 + reply + composite.tokenize("<|im_end|>\n" + CHAT.format("and then?"), add_bos=False)
    slot = next(s for s in range(4) if composite.members["large"].cached[s][: len(turn1)] == turn1)
    before = {r: m.stats.evaluated for r, m in composite.members.items()}
    n2 = 5
    req2 = GenerateRequest(prompt=turn2, sampling=GREEDY, num_predict=n2, ignore_eos=True)
    other_chunks, chunks2 = composite.generate_batch([other, req2])  # the other chat is admitted first
    new = len(turn2) - (len(turn1) + len(reply) - 1)  # the reply's last token was never evaluated
    assert chunks2[-1].stats.prompt_eval_tokens == new
    assert composite.members["large"].cached[slot][: len(turn2)] == turn2  # turn 2 went back to its slot
    o = other_chunks[-1].stats
    other_evaluated = o.prompt_eval_tokens + o.eval_count - 1  # ended by length: its last token unevaluated
    for role, member in composite.members.items():
        assert member.stats.evaluated - before[role] == new + (n2 - 1) + other_evaluated, role


def test_two_composites_sharing_weights_run_side_by_side(tiny):
    pool = ModelPool()
    full = Composite.load(recipe_over(tiny), pool)
    lora = Composite.load(recipe_over(tiny, adapter=True, alpha=0.7), pool)
    try:
        assert full.members["large"].model is lora.members["large"].model  # one copy of the weights
        reqs = MIXED[:3]
        alone = {name: [ids(c.generate(r)) for r in reqs] for name, c in (("full", full), ("lora", lora))}
        assert alone["full"] != alone["lora"]

        async def main():
            jobs = [collect(c.stream(r)) for c in (full, lora) for r in reqs]
            return await asyncio.gather(*jobs)

        results = [ids(r) for r in asyncio.run(asyncio.wait_for(main(), 60))]
        assert results == alone["full"] + alone["lora"]
    finally:
        full.close()
        lora.close()


def test_more_requests_than_slots_wait_and_all_complete(q8):
    reqs = [
        GenerateRequest(prompt=CHAT.format(f"question {i}"), sampling=GREEDY, num_predict=6) for i in range(7)
    ]
    alone = [ids(q8.generate(r)) for r in reqs]
    q8.scheduler.widest = 0
    assert [ids(c) for c in q8.generate_batch(reqs)] == alone
    assert q8.scheduler.widest == 4


def test_blocking_generators_from_threads_batch_and_stay_uncrossed(q8):
    reqs = [
        GenerateRequest(prompt=CHAT.format(f"thread {i} " * (i + 1)), sampling=GREEDY, num_predict=16)
        for i in range(4)
    ]
    alone = [ids(q8.generate(r)) for r in reqs]
    got: list = [None] * 4

    def run(i):
        got[i] = ids(q8.generate(reqs[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == alone


# -- any strategy: several rows of logits, some members only, rollback; errors stay in their request


def run_tickets(comp, strategies):
    """Drive raw strategies through the scheduler (admitted together); their items per ticket."""
    done = threading.Event()
    items: list[list] = [[] for _ in strategies]
    left = [len(strategies)]

    def put(i):
        def put_item(item):
            items[i].append(item)
            if isinstance(item, BaseException) or item is None:
                left[0] -= 1
                if not left[0]:
                    done.set()

        return put_item

    tickets = [Ticket(make, put(i), [1], "large", max_ahead=1 << 30) for i, make in enumerate(strategies)]
    comp.scheduler.submit(*tickets)
    assert done.wait(60)
    return items


def test_scheduler_serves_multi_row_partial_and_rollback_needs(q8, tiny_q8):
    """A speculative-like strategy (drafts verified with n_logits > 1, then rolled back) and a lazy
    one (large alone, then every member catching up) get the same logits as fresh members alone."""
    rng = np.random.default_rng(1)
    prompt = list(map(int, rng.integers(0, 250, size=30)))
    seen: dict[str, list] = {"spec": [], "lazy": []}

    def spec(seq):
        draft = prompt + [5, 6, 7, 8]
        logits = yield {r: Hold(seq, draft, 5) for r in ("large", "base", "tuned")}
        seen["spec"].append(("all", draft, 5, logits))
        back = prompt + [5, 9]  # reject 6, 7, 8 and take 9
        logits = yield {"large": Hold(seq, back, 2)}
        seen["spec"].append(("large", back, 2, logits))

    def lazy(seq):
        toks = prompt[:20]
        for t in prompt[20:24]:
            toks = toks + [t]
            logits = yield {"large": Hold(seq, toks)}
            seen["lazy"].append(("large", toks, 1, logits))
        logits = yield {r: Hold(seq, toks) for r in ("large", "base", "tuned")}
        seen["lazy"].append(("all", toks, 1, logits))

    items = run_tickets(q8, [spec, lazy])
    assert items == [[None], [None]]
    for runs in seen.values():
        for who, toks, n, logits in runs:
            for role in ("large", "base", "tuned") if who == "all" else ("large",):
                fresh = Member(role, q8.members[role].model, n_ctx=256, n_seq=1)
                try:
                    assert np.array_equal(logits[role], fresh.hold([Hold(0, toks, n)])[0]), (who, role)
                finally:
                    fresh.close()


def test_an_error_in_one_request_ends_only_that_request(q8):
    alone = ids(q8.generate(MIXED[0]))
    result = {}

    def broken(seq):
        yield {"large": Hold(seq, [1, 2, 3])}
        raise RuntimeError("strategy bug")

    def wrong_slot(seq):
        yield {"large": Hold((seq + 1) % 4, [1, 2, 3])}

    def too_long(seq):
        yield {"large": Hold(seq, [1] * (q8.n_ctx + 5))}

    def good(seq):
        gen, steps = q8.start(MIXED[0], seq)
        yield from steps
        result["ids"] = gen.tokens[gen.n_prompt :]

    items = run_tickets(q8, [broken, wrong_slot, too_long, good])
    assert isinstance(items[0][-1], RuntimeError) and "strategy bug" in str(items[0][-1])
    assert isinstance(items[1][-1], RuntimeError) and "sequence" in str(items[1][-1])
    assert isinstance(items[2][-1], ValueError) and "context" in str(items[2][-1])
    assert items[3] == [None] and result["ids"] == alone
    assert q8.scheduler.active() == []


def test_closing_the_composite_ends_running_and_waiting_requests(tiny):
    comp = Composite.load(recipe_over(tiny, extra="parameters: {num_ctx: 512, num_parallel: 1}\n"))
    long = GenerateRequest(prompt=CHAT.format("x"), sampling=GREEDY, num_predict=400, ignore_eos=True)
    running = comp.generate(long)
    next(running)
    waiting = comp.generate(long)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", list_or_error(waiting)))
    t.start()
    time.sleep(0.05)
    comp.close()
    t.join(10)
    rest = list(running)
    assert rest[-1].done_reason == DoneReason.CANCEL
    assert "unloaded" in str(box["r"])


def list_or_error(it):
    try:
        return list(it)
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return exc


def test_running_streams_keep_producing_while_a_long_prompt_is_evaluated(tiny_q8):
    """num_batch 64: beside a running stream, a 400-token prompt goes in 16 tokens a round."""
    comp = Composite.load(recipe_over(tiny_q8, extra="parameters: {num_ctx: 1024, num_batch: 64}\n"))
    try:
        times: list[tuple[float, int]] = []
        started = threading.Event()

        def stream_a():
            req = GenerateRequest(prompt=CHAT.format("a"), sampling=GREEDY, num_predict=600, ignore_eos=True)
            for chunk in comp.generate(req):
                times.append((time.perf_counter(), len(chunk.token_ids)))
                if len(times) >= 3:
                    started.set()

        a = threading.Thread(target=stream_a)
        a.start()
        assert started.wait(30)
        long = GenerateRequest(prompt=CHAT.format("word " * 200), sampling=GREEDY, num_predict=2)
        assert len(comp.tokenize(long.prompt)) > 400
        t0 = time.perf_counter()
        first = next(iter(comp.generate(long)))
        t1 = time.perf_counter()
        a.join(60)
        during = sum(n for t, n in times if t0 < t < t1)
        assert first.token_ids and during >= 10  # 400 / 16 = 25 rounds, each with a token of A
    finally:
        comp.close()
