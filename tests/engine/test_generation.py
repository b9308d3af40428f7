"""Generation behaviour: seeds, stop strings, UTF-8, prefix reuse, cancellation, context limits."""

from __future__ import annotations

import asyncio
import threading

import pytest
from engine_helpers import GREEDY, run_text

from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.types import DoneReason, GenerateRequest
from nanocommander.errors import ContextOverflow

PROMPT = "<|im_start|>user\ntell me a story<|im_end|>\n<|im_start|>assistant\n"


def test_same_seed_same_text_other_seed_other_text(composite):
    def sample(seed):
        opts = merge_sampling({"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": seed})
        return run_text(composite, PROMPT, sampling=opts, num_predict=30)

    first = sample(42)
    assert first == sample(42)
    assert first != sample(43)


def test_temperature_zero_is_deterministic(composite):
    assert run_text(composite, PROMPT) == run_text(composite, PROMPT)


def test_stop_string_spanning_tokens_is_matched_and_not_emitted(composite):
    full = run_text(composite, PROMPT, num_predict=40)
    chunks = list(composite.generate(GenerateRequest(prompt=PROMPT, sampling=GREEDY, num_predict=40)))
    pieces = [c.text for c in chunks if c.text]
    # a stop made of the end of one piece and the start of the next spans two tokens
    i = next(i for i in range(3, len(pieces) - 1) if pieces[i] and pieces[i + 1])
    stop = pieces[i][-1] + pieces[i + 1][:1]
    cut = full.index(stop)
    out = list(
        composite.generate(GenerateRequest(prompt=PROMPT, sampling=GREEDY, num_predict=40, stop=(stop,)))
    )
    text = "".join(c.text for c in out)
    assert text == full[:cut]
    assert out[-1].done_reason == DoneReason.STOP
    kept = run_text(composite, PROMPT, num_predict=40, stop=(stop,), trim_stop=False)
    assert kept == full[:cut] + stop


def test_multibyte_characters_split_across_tokens_come_out_whole(composite):
    grammar = 'root ::= "日本語 🙂 é" [a-z]*'
    opts = merge_sampling({"temperature": 0, "grammar": grammar})
    chunks = [
        c.text for c in composite.generate(GenerateRequest(prompt=PROMPT, sampling=opts, num_predict=20))
    ]
    text = "".join(chunks)
    assert text.startswith("日本語 🙂 é")
    assert len(composite.tokenize("日本語 🙂 é", add_bos=False)) > len("日本語 🙂 é")  # really split
    for piece in chunks:
        assert "\ufffd" not in piece
        piece.encode("utf-8")  # whole characters only: no lone surrogates or partial sequences


def test_prefix_reuse_evaluates_only_the_new_tokens(composite):
    first = composite.tokenize("<|im_start|>user\nhello there, how are you<|im_end|>\n")
    second = first + composite.tokenize("<|im_start|>assistant\nfine", add_bos=False)
    list(composite.generate(GenerateRequest(prompt=first, sampling=GREEDY, num_predict=1)))
    before = {r: m.stats.evaluated for r, m in composite.members.items()}
    list(composite.generate(GenerateRequest(prompt=second, sampling=GREEDY, num_predict=1)))
    for role, member in composite.members.items():
        assert member.stats.evaluated - before[role] == len(second) - len(first), role


def test_stats_and_length_reason(composite):
    chunks = list(composite.generate(GenerateRequest(prompt=PROMPT, sampling=GREEDY, num_predict=7)))
    last = chunks[-1]
    assert last.done and last.done_reason in (DoneReason.LENGTH, DoneReason.STOP)
    assert last.stats.prompt_tokens == len(composite.tokenize(PROMPT))
    assert last.stats.eval_count <= 7 and last.stats.eval_s > 0 and last.stats.prompt_eval_s > 0
    if last.done_reason == DoneReason.LENGTH:
        assert last.stats.eval_count == 7


def test_cancellation_takes_effect_within_one_token(composite):
    cancel = threading.Event()
    gen = composite.generate(
        GenerateRequest(prompt=PROMPT, sampling=GREEDY, num_predict=500, ignore_eos=True), cancel
    )
    seen = 0
    try:
        for chunk in gen:
            if chunk.done:
                break
            seen += len(chunk.token_ids)
            if seen >= 3 and not cancel.is_set():
                cancel.set()
                at_cancel = seen
    finally:
        gen.close()
    assert chunk.done_reason == DoneReason.CANCEL
    assert chunk.stats.eval_count <= at_cancel + 1


def test_async_stream_closed_early_frees_the_model(composite):
    async def main():
        req = GenerateRequest(prompt=PROMPT, sampling=GREEDY, num_predict=400, ignore_eos=True)
        agen = composite.stream(req)
        async for _ in agen:
            break
        await agen.aclose()
        # the model is free again: a new generation completes promptly
        out = [
            c async for c in composite.stream(GenerateRequest(prompt=PROMPT, sampling=GREEDY, num_predict=3))
        ]
        return out

    out = asyncio.run(asyncio.wait_for(main(), timeout=30))
    assert out[-1].done


def test_prompt_plus_num_predict_beyond_the_context_is_refused(composite):
    long_prompt = "the " * (composite.n_ctx + 10)
    with pytest.raises(ContextOverflow, match="exceeds the context size"):
        list(composite.generate(GenerateRequest(prompt=long_prompt, sampling=GREEDY)))
    short = composite.tokenize(PROMPT)
    with pytest.raises(ContextOverflow):
        list(composite.generate(GenerateRequest(prompt=short, num_predict=composite.n_ctx)))


def test_chat_prompt_drops_oldest_turns_to_fit_but_keeps_system(composite):
    turns = []
    for i in range(200):
        turns += [
            {"role": "user", "content": f"question {i} " + "x" * 40},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    turns.append({"role": "user", "content": "last question"})
    prompt = composite.chat_prompt([{"role": "system", "content": "SYS"}] + turns, num_predict=100)
    ids = composite.tokenize(prompt)
    assert len(ids) + 100 <= composite.n_ctx
    assert prompt.startswith("<|im_start|>system\nSYS") and "last question" in prompt
    assert "question 0 " not in prompt


def test_recipe_system_prompt_applies_only_when_conversation_has_none(tiny):
    from engine_helpers import recipe_over

    from nanocommander.engine.runtime.composite import Composite

    comp = Composite.load(recipe_over(tiny, extra='system: "Be a pirate."\n'))
    try:
        assert "Be a pirate." in comp.chat_prompt([{"role": "user", "content": "hi"}])
        own = comp.chat_prompt([{"role": "system", "content": "Mine"}, {"role": "user", "content": "hi"}])
        assert "Be a pirate." not in own and "Mine" in own
    finally:
        comp.close()


def test_a_window_of_minus_one_means_the_whole_context_for_dry_and_repetition_penalties(composite):
    def text(**opts) -> str:
        sampling = merge_sampling({"temperature": 0, "repeat_penalty": 1.0, **opts})
        return run_text(composite, "ab ab ab ab ab ab", sampling=sampling, num_predict=40)

    plain = text()
    assert text(dry_multiplier=0.8, dry_penalty_last_n=-1) == text(dry_multiplier=0.8, dry_penalty_last_n=512)
    assert text(dry_multiplier=0.8, dry_penalty_last_n=-1) != plain  # DRY really acts at -1
    assert text(repeat_penalty=1.5, repeat_last_n=-1) == text(repeat_penalty=1.5, repeat_last_n=512)
    assert text(repeat_penalty=1.5, repeat_last_n=-1) != plain
