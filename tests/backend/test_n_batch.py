"""OpenAI `n` samples (issue 23, item 7), beside tests/backend/test_n_batched.py: each seeded sample is
the reply its seed gives alone (streamed and not), the chat is rendered once off the event loop, and
streamed completions count every sample's tokens in their usage."""

from __future__ import annotations

import threading

import pytest
from openai import OpenAI

from nanocommander.backend.app import MANAGER

ASK = [{"role": "user", "content": "tell me"}]


@pytest.fixture(scope="module")
def live(recipe_of, start_server):
    return start_server([recipe_of("batch")], keep_alive=300, num_parallel=4, runners=False)


@pytest.fixture(scope="module")
def oa(live):
    return OpenAI(base_url=f"{live.url}/v1", api_key="unused")


@pytest.mark.parametrize("stream", [False, True])
def test_n3_seeded_sampling_is_reproducible_and_equals_each_seed_alone(oa, stream):
    kw = dict(model="batch", messages=ASK, temperature=1.0, max_tokens=10, seed=11)

    def run() -> list[str]:
        if not stream:
            return [c.message.content for c in oa.chat.completions.create(**kw, n=3).choices]
        texts = ["", "", ""]
        for chunk in oa.chat.completions.create(**kw, n=3, stream=True):
            for c in chunk.choices:
                texts[c.index] += c.delta.content or ""
        return texts

    first = run()
    assert run() == first and len(set(first)) == 3
    singles = [
        oa.chat.completions.create(**{**kw, "seed": 11 + i}).choices[0].message.content for i in range(3)
    ]
    assert first == singles


def test_completions_n3_equal_each_seed_alone_and_stream_one_usage_for_all(oa, live):
    kw = dict(model="batch", prompt="a", max_tokens=8, temperature=1.0, seed=3)
    out = oa.completions.create(**kw, n=3)
    assert len(out.choices) == 3
    texts = [c.text for c in sorted(out.choices, key=lambda c: c.index)]
    assert texts == [oa.completions.create(**{**kw, "seed": 3 + i}).choices[0].text for i in range(3)]
    streamed = ["", "", ""]
    usage = None
    usages = []
    for chunk in oa.completions.create(**kw, n=3, stream=True, stream_options={"include_usage": True}):
        for c in chunk.choices:
            streamed[c.index] += c.text
        if chunk.usage:
            usage = chunk.usage
            usages.append(usage)
    assert len(usages) == 1
    assert streamed == texts and usage.completion_tokens == out.usage.completion_tokens


def test_the_chat_is_rendered_once_off_the_event_loop_for_all_samples(oa, live, monkeypatch):
    comp = live.app[MANAGER].loaded["batch:latest"].composite
    threads: list[int] = []
    real = comp.chat_tokens

    def counted(*args, **kwargs):
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(comp, "chat_tokens", counted)
    out = oa.chat.completions.create(model="batch", messages=ASK, temperature=0, max_tokens=4, n=3)
    assert len(out.choices) == 3
    assert len(threads) == 1 and threads[0] != live.thread.ident  # once, and not on the server's loop
