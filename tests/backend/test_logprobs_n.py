"""`n` samples and log-probabilities, checked against the members run directly with llama-cpp-python.

The reference loads the three tiny members as plain `llama_cpp.Llama` models, evaluates the
same tokens, fuses large + alpha * (tuned - base) in the test and takes log_softmax of
fused / temperature: the server's numbers must be those.
"""

from __future__ import annotations

import json

import httpx
import llama_cpp
import numpy as np
import ollama
import pytest
from openai import BadRequestError, OpenAI

from nanocommander.engine.decode.logprobs import token_text

ALPHA = 1.0  # the "tiny" recipe's


@pytest.fixture(scope="module")
def oa(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused")


@pytest.fixture(scope="module")
def members(tiny):
    out = {
        role: llama_cpp.Llama(str(tiny[role]), n_ctx=512, logits_all=True, verbose=False, flash_attn=True)
        for role in ("large", "base", "tuned")
    }
    yield out
    for llm in out.values():
        llm.close()


def member_logits(members, tokens: list[int], n_prompt: int | None = None) -> dict[str, np.ndarray]:
    """Each member's logits at every position of `tokens` (row i predicts token i + 1); as the
    engine does, the prompt is one batch and each later token its own (batching moves the last bits)."""
    n_prompt = len(tokens) if n_prompt is None else n_prompt
    out = {}
    for role, llm in members.items():
        llm.reset()
        llm.eval(tokens[:n_prompt])
        for t in tokens[n_prompt:]:
            llm.eval([t])
        out[role] = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    return out


def log_softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    x = x / temperature if temperature > 0 else x
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


def piece(llm, token: int) -> bytes:
    return llm.detokenize([token], special=True)


def test_ollama_logprobs_are_log_softmax_of_the_fused_logits_over_temperature(server, members):
    temperature = 0.7
    body = {
        "model": "tiny",
        "prompt": "once upon a time",
        "stream": False,
        "logprobs": True,
        "top_logprobs": 3,
        "options": {"temperature": temperature, "seed": 11, "num_predict": 8},
    }
    out = httpx.post(f"{server.url}/api/generate", json=body, timeout=60).json()
    context, entries = out["context"], out["logprobs"]
    generated = context[len(context) - out["eval_count"] :]
    assert len(entries) == len(generated) == out["eval_count"] > 0
    start = len(context) - len(generated)
    logits = member_logits(members, context, start)
    for j, (token, entry) in enumerate(zip(generated, entries, strict=True)):
        row = start + j - 1
        fused = logits["large"][row] + ALPHA * (logits["tuned"][row] - logits["base"][row])
        ref = log_softmax(fused, temperature)
        assert entry["logprob"] == pytest.approx(ref[token], abs=2e-3)
        assert bytes(entry["bytes"]) == piece(members["large"], token)
        top = np.argsort(-ref)[:3]
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(list(ref[top]), abs=2e-3)
        assert [bytes(t["bytes"]) for t in entry["top_logprobs"]] == [piece(members["large"], t) for t in top]

    # one member's own distribution instead, at the same positions
    tuned = httpx.post(
        f"{server.url}/api/generate", json={**body, "logprobs_member": "tuned"}, timeout=60
    ).json()
    assert tuned["context"] == context  # the same sample; only what is reported changed
    for j, (token, entry) in enumerate(zip(generated, tuned["logprobs"], strict=True)):
        ref = log_softmax(logits["tuned"][start + j - 1], temperature)
        assert entry["logprob"] == pytest.approx(ref[token], abs=2e-3)


def test_openai_completions_logprobs_at_temperature_zero_follow_the_fused_logits(oa, members):
    prompt = "the cat"
    out = oa.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    lp = out.choices[0].logprobs
    tokens = members["large"].tokenize(prompt.encode(), add_bos=True, special=True)
    for j, text in enumerate(lp.tokens):  # greedy decoding by hand, over the members' own logits
        logits = member_logits(members, tokens)
        fused = logits["large"][-1] + ALPHA * (logits["tuned"][-1] - logits["base"][-1])
        ref = log_softmax(fused, 0)
        best = int(np.argmax(ref))
        assert text == token_text(piece(members["large"], best))
        assert lp.token_logprobs[j] == pytest.approx(ref[best], abs=2e-3)
        second = int(np.argsort(-ref)[1])
        want = {text: ref[best], token_text(piece(members["large"], second)): ref[second]}
        assert lp.top_logprobs[j] == pytest.approx(want, abs=2e-3)
        tokens.append(best)
    n_prompt = len(tokens) - len(lp.tokens)
    assert members["large"].detokenize(tokens[n_prompt:]).decode(errors="replace") == out.choices[0].text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_chat_logprobs_streamed_equal_not_streamed_and_ollama(oa, server):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=6)
    whole = oa.chat.completions.create(**kw, logprobs=True, top_logprobs=2)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens and all(len(c.top_logprobs) == 2 for c in content)
    streamed = [
        e
        for chunk in oa.chat.completions.create(**kw, logprobs=True, top_logprobs=2, stream=True)
        for c in chunk.choices
        for e in (c.logprobs.content if c.logprobs and c.logprobs.content else ())
    ]
    # equal up to float noise: a repeated prompt reuses the KV cache, so it is batched differently
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=2e-3)
    opts = {"temperature": 0, "num_predict": 6, "top_k": 0, "top_p": 1, "repeat_penalty": 1}
    native = ollama.Client(host=server.url).chat(
        "tiny", messages=kw["messages"], options=opts, logprobs=True, top_logprobs=2
    )
    assert [e.token for e in native.logprobs] == [e.token for e in content]
    assert [e.logprob for e in native.logprobs] == pytest.approx([e.logprob for e in content], abs=2e-3)
    assert oa.chat.completions.create(**kw).choices[0].logprobs is None


def test_n_gives_independent_seeded_samples(oa):
    kw = dict(
        model="tiny", messages=[{"role": "user", "content": "tell"}], temperature=1.0, max_tokens=12, seed=5
    )
    out = oa.chat.completions.create(**kw, n=3)
    texts = [c.message.content for c in out.choices]
    assert [c.index for c in out.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert out.usage.completion_tokens == sum(
        oa.chat.completions.create(**{**kw, "seed": 5 + i}).usage.completion_tokens for i in range(3)
    )
    assert oa.chat.completions.create(**kw).choices[0].message.content == texts[0]  # seed + 0
    streamed = ["", "", ""]
    for chunk in oa.chat.completions.create(**kw, n=3, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == texts
    unseeded = oa.chat.completions.create(**{**kw, "seed": None}, n=2)
    assert len(unseeded.choices) == 2
    completions = oa.completions.create(model="tiny", prompt="a", max_tokens=8, temperature=1.0, seed=2, n=2)
    assert len({c.text for c in completions.choices}) == 2


def test_bad_n_and_logprobs_are_400s(oa, server):
    with pytest.raises(BadRequestError, match='"n"'):
        oa.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=0)
    with pytest.raises(BadRequestError, match="top_logprobs"):
        oa.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=99
        )
    r = httpx.post(
        f"{server.url}/api/generate",
        json={"model": "tiny", "prompt": "x", "logprobs": True, "logprobs_member": "huge", "stream": False},
    )
    assert r.status_code == 400 and "logprobs_member" in r.json()["error"]
    r = httpx.post(  # at alpha 0 the small members are not run at all
        f"{server.url}/api/generate",
        json={
            "model": "tiny",
            "prompt": "x",
            "logprobs": True,
            "logprobs_member": "base",
            "options": {"alpha": 0},
            "stream": False,
        },
    )
    assert r.status_code == 400 and json.dumps(r.json()).count("alpha 0") == 1
