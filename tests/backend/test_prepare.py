"""The one prepare step: a recipe's num_predict sizes the turn dropping on every protocol's chat path.

Recipe `parameters: {num_ctx: 1024, num_predict: 400}` and a 12-turn chat of about 800 tokens: it
fits the context alone but not with 400 tokens to write, so the oldest turns must go (a 400 "prompt
plus num_predict exceeds the context size" was the bug, on /api/chat and /v1/chat/completions; on
Kobold's text path the recipe's num_predict was ignored and the reply given whatever was left).
"""

from __future__ import annotations

import httpx
import pytest

NUM_CTX, NUM_PREDICT = 1024, 400
EXTRA = f"parameters: {{temperature: 0, num_ctx: {NUM_CTX}, num_predict: {NUM_PREDICT}}}\n"


def twelve_turns() -> list[dict[str, str]]:
    turns = []
    for i in range(6):
        turns.append({"role": "user", "content": f"question {i}: " + "tell me more about it " * 3})
        turns.append({"role": "assistant", "content": f"answer {i}: " + "it is like this and that " * 3})
    turns[-1] = {"role": "user", "content": "the last question, please answer it"}
    return turns


def chatml(turns: list[dict[str, str]]) -> str:
    """The tiny models' template (tests/tiny_models.py CHATML_TEMPLATE), as SillyTavern would build it."""
    body = "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in turns)
    return body + "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def live(start_server, recipe_of):
    return start_server([recipe_of("budget", extra=EXTRA)], default_model="budget")


@pytest.fixture(scope="module")
def full_tokens(live) -> int:
    """The whole chat's prompt length: between num_ctx - num_predict and num_ctx, or the test is moot."""
    r = httpx.post(f"{live.url}/api/extra/tokencount", json={"prompt": chatml(twelve_turns())}, timeout=60)
    n = r.json()["value"]
    assert NUM_CTX - NUM_PREDICT < n < NUM_CTX, n
    return n


def test_ollama_chat_drops_turns_for_the_recipes_num_predict(live, full_tokens):
    body = {"model": "budget", "messages": twelve_turns(), "stream": False}
    r = httpx.post(f"{live.url}/api/chat", json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["prompt_eval_count"] + NUM_PREDICT <= NUM_CTX
    assert 0 < out["prompt_eval_count"] < full_tokens  # turns were dropped, the newest kept
    assert out["eval_count"] <= NUM_PREDICT


def test_openai_chat_drops_turns_for_the_recipes_num_predict(live, full_tokens):
    body = {"model": "budget", "messages": twelve_turns()}
    r = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] + NUM_PREDICT <= NUM_CTX
    assert 0 < usage["prompt_tokens"] < full_tokens
    assert usage["completion_tokens"] <= NUM_PREDICT


def test_kobold_text_chat_keeps_room_for_the_recipes_num_predict(live, full_tokens):
    """A Kobold client sends the chat as text and no max_length: the recipe's num_predict decides
    the reply's room, and the oldest text is cut to leave it (KoboldCpp's policy, never a 400)."""
    r = httpx.post(f"{live.url}/api/v1/generate", json={"prompt": chatml(twelve_turns())}, timeout=300)
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["prompt_tokens"] + NUM_PREDICT <= NUM_CTX
    assert result["prompt_tokens"] < full_tokens
    assert result["completion_tokens"] <= NUM_PREDICT


def test_a_request_num_predict_still_wins_over_the_recipes(live, full_tokens):
    body = {"model": "budget", "messages": twelve_turns(), "stream": False, "options": {"num_predict": 8}}
    out = httpx.post(f"{live.url}/api/chat", json=body, timeout=300).json()
    assert out["prompt_eval_count"] == full_tokens  # 8 tokens to write: nothing had to go
    assert out["eval_count"] <= 8
