"""Per-request `steer` and `speculative` in all three protocols; bad values are the protocol's own 400."""

from __future__ import annotations

import httpx
import pytest

GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 12}
NEVER = {"mode": "gated", "top1": 0.0}  # a gate that never opens: the large model alone


def ollama(server, **body):
    r = httpx.post(
        f"{server.url}/api/generate",
        json={"model": "tiny", "prompt": "Once upon a time", "stream": False, **body},
        timeout=60,
    )
    return r


def test_ollama_options_steer_and_speculative(server):
    large = ollama(server, options={**GREEDY, "member": "large"}).json()
    never = ollama(server, options={**GREEDY, "steer": NEVER}).json()
    assert never["response"] == large["response"]
    assert never["steer_mode"] == "gated" and never["steered_count"] == 0
    refused = ollama(server, options={**GREEDY, "steer": {"mode": "recommended", "plain": 0.3}})
    assert refused.status_code == 400 and "loaded without" in refused.json()["error"]  # no second sequence
    named = ollama(server, options={**GREEDY, "steer": "recommended", "speculative": False}).json()
    assert named["steer_mode"] == "nudge" and "draft_count" not in named
    drafted = ollama(server, options={**GREEDY, "speculative": {"draft": "tuned", "max": 4}}).json()
    plain = ollama(server, options={**GREEDY, "speculative": False}).json()
    assert drafted["response"] == plain["response"]
    assert drafted["draft_source"] == "tuned" and drafted["draft_count"] >= drafted["draft_accepted"] >= 0
    assert "draft_count" not in plain and "steer_mode" not in plain


@pytest.mark.parametrize(
    "options,words",
    [
        ({"steer": "sideways"}, "steer must be one of"),
        ({"steer": {"mode": "gated", "beta": 1}}, "not a parameter"),
        ({"speculative": "always"}, "speculative must be"),
        ({"speculative": {"draft": "tuned", "max": 99}}, "speculative.max"),
    ],
)
def test_ollama_bad_values_are_400(server, options, words):
    r = ollama(server, options=options)
    assert r.status_code == 400 and words in r.json()["error"]


def test_openai_top_level_steer_and_speculative(server):
    def chat(**extra):
        return httpx.post(
            f"{server.url}/v1/chat/completions",
            timeout=60,
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": "Hi"}],
                "temperature": 0,
                "max_tokens": 10,
                **extra,
            },
        )

    large = chat(member="large").json()["choices"][0]["message"]["content"]
    assert chat(steer=NEVER, speculative=False).json()["choices"][0]["message"]["content"] == large
    r = chat(steer={"mode": "plausible", "beta": 3})
    assert r.status_code == 400 and "between 0 and 1" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = chat(speculative=[1])
    assert r.status_code == 400 and "speculative" in r.json()["error"]["message"]


def test_kobold_top_level_steer_and_speculative(server):
    def gen(**extra):
        return httpx.post(
            f"{server.url}/api/v1/generate",
            timeout=60,
            json={"prompt": "Once upon a time", "max_length": 10, "temperature": 0, "rep_pen": 1.0, **extra},
        )

    large = gen(member="large").json()["results"][0]["text"]
    assert gen(steer=NEVER, speculative=False).json()["results"][0]["text"] == large
    assert gen(steer="nudge", speculative="lookup").status_code == 200
    r = gen(steer={"mode": "nudge", "word": "yes"})
    assert r.status_code == 400 and r.json()["detail"]["type"] == "bad_input"
    assert "true or false" in r.json()["detail"]["msg"]


def test_a_recipe_that_reads_plainly_keeps_a_second_large_sequence_per_slot(start_server, recipe_of):
    """A recipe steer with plain: the large model's KV cache doubles (shown in ps), every request may
    use plain, and a request may still turn it off."""
    styled = recipe_of("styled", extra="steer: {mode: recommended, plain: 0.3}\n")
    live = start_server([styled, recipe_of("proxied")], num_parallel=2)

    def ask(model, **options):
        body = {
            "model": model,
            "prompt": "Once upon a time",
            "stream": False,
            "options": {**GREEDY, **options},
        }
        return httpx.post(f"{live.url}/api/generate", json=body, timeout=60)

    styled = ask("styled").json()
    assert styled["steer_mode"] == "nudge" and 0 <= styled["steered_count"] <= styled["eval_count"]
    r = ask("styled", steer={"mode": "nudge", "plain": 0.2})
    assert r.status_code == 200, r.text
    assert ask("styled", steer="recommended").status_code == 200
    ask("proxied")
    ps = {
        m["model"]: m["composite"]["kv_cache"]["bytes"]
        for m in httpx.get(f"{live.url}/api/ps").json()["models"]
    }
    assert ps["styled:latest"]["large"] == 2 * ps["proxied:latest"]["large"]
    assert ps["styled:latest"]["base"] == ps["proxied:latest"]["base"]
    one_reading = ask("proxied", steer={"mode": "nudge", "plain": 0})  # no second sequence needed
    assert one_reading.status_code == 200
    r = ask("styled", steer={"mode": "nudge", "plain": 2})
    assert r.status_code == 400 and "between 0 and 1" in r.json()["error"]
