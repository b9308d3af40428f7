"""The exact request bodies SillyTavern builds (tests/fixtures/sillytavern, made by running its own
body builders from the 1.12.6 and 1.19.0 packages) get replies, read the way SillyTavern reads them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures" / "sillytavern"
VERSIONS = {p.stem.removeprefix("bodies-"): json.loads(p.read_text()) for p in FIXTURES.glob("bodies-*.json")}
CASES = [
    pytest.param(version, case, id=f"{version}-{case['api']}-{'stream' if case['stream'] else 'plain'}")
    for version, data in sorted(VERSIONS.items())
    for case in data["cases"]
]
N_CTX = 1024


@pytest.fixture(scope="module")
def st_server(start_server, recipe_of):
    """As the issue's user ran it: `serve RECIPE --default-model NAME`, a second model beside it."""
    recipes = [recipe_of("other"), recipe_of("tiny", extra=f"parameters: {{num_ctx: {N_CTX}}}\n")]
    return start_server(recipes, default_model="tiny", max_queue=16)


def test_connect_names_the_default_model(st_server):
    """SillyTavern's Connect shows (and the extension describes) the first /v1/models entry."""
    ids = [m["id"] for m in httpx.get(f"{st_server.url}/v1/models").json()["data"]]
    assert ids[0] == "tiny:latest" and "other:latest" in ids


def body_of(case: dict, prompt: str, **changes) -> dict:
    body = json.loads(json.dumps(case["body"]).replace('"{{PROMPT}}"', json.dumps(prompt)))
    return {**body, **changes}


def reply(url: str, case: dict, body: dict) -> tuple[str, dict]:
    """The reply text as SillyTavern extracts it, and the final event or object."""
    r = httpx.post(url + case["path"], json=body, timeout=120)
    assert r.status_code == 200, r.text
    if not case["stream"]:
        data = r.json()
        if case["api"] == "kobold":
            return data["results"][0]["text"], data["results"][0]
        return data["choices"][0]["text"], data
    text, last = "", {}
    for block in r.text.split("\n\n"):
        if case["api"] == "kobold":  # KoboldAI Classic reads `data.token` of each message event
            if block.startswith("event: message\ndata: "):
                last = json.loads(block.split("data: ", 1)[1])
                text += last["token"]
            continue
        if not block.startswith("data: ") or block == "data: [DONE]":
            continue
        last = json.loads(block[6:])
        assert not {"error", "message", "detail"} & set(last), last  # SillyTavern would toast these
        text += (last.get("choices") or [{}])[0].get("text", "")
    assert r.text.rstrip().endswith("data: [DONE]") or case["api"] == "kobold"
    return text, last


@pytest.mark.parametrize("version,case", CASES)
def test_sillytavern_body_gets_a_reply(st_server, version, case):
    text, last = reply(st_server.url, case, body_of(case, "User: Hello there!\nSeraphina:"))
    assert isinstance(text, str)
    finish = last.get("finish_reason") or (last.get("choices") or [{}])[0].get("finish_reason")
    assert finish in ("stop", "length")


def test_json_string_breakers_with_dry_on_match_the_list_form(st_server):
    """SillyTavern 1.12's string form and 1.19's list form of dry_sequence_breakers give one reply, and
    the breakers reach the DRY sampler (with SillyTavern's penalty range 0, "the whole context")."""
    old = next(c for c in VERSIONS["1.12.6"]["cases"] if c["api"] == "textgen/koboldcpp" and not c["stream"])
    assert isinstance(old["body"]["dry_sequence_breakers"], str) and old["body"]["dry_penalty_last_n"] == 0
    seed = body_of(
        old, "Once upon a time", temperature=0, max_tokens=30, stop=[], rep_pen=1.0, repeat_penalty=1.0
    )
    first = reply(st_server.url, old, seed)[0]
    dry = {"dry_multiplier": 2.0, "dry_base": 2.0, "dry_allowed_length": 1}
    looped = {**seed, "prompt": f"Once upon a time{first}Once upon a time", **dry}  # the model repeats itself
    breakers = sorted(set(first) - {"\ufffd"})
    as_string = {**looped, "dry_sequence_breakers": json.dumps(breakers)}
    as_list = {**looped, "dry_sequence_breakers": breakers}
    none = {**looped, "dry_sequence_breakers": "[]"}
    off = {**looped, "dry_multiplier": 0}
    texts = [reply(st_server.url, old, b)[0] for b in (as_string, as_list, none, off)]
    assert texts[0] == texts[1] and texts[0] != texts[2] and texts[2] != texts[3]
    bad = httpx.post(f"{st_server.url}/v1/completions", json={**as_string, "dry_sequence_breakers": {"a": 1}})
    assert bad.status_code == 400 and "dry_sequence_breakers" in bad.json()["error"]["message"]


def test_numbers_as_strings_are_read_as_numbers(st_server):
    case = next(c for c in VERSIONS["1.19.0"]["cases"] if c["api"] == "textgen/koboldcpp" and not c["stream"])
    numbers = body_of(case, "Count: one two", temperature=0, top_k=1, max_tokens=12, rep_pen=1.0)
    strings = {**numbers, "temperature": "0", "top_k": "1", "max_tokens": "12", "rep_pen": "1.0"}
    assert reply(st_server.url, case, numbers)[0] == reply(st_server.url, case, strings)[0]


def long_prompt(url: str, tokens: int) -> str:
    text = " ".join(f"line {i} of the story so far." for i in range(tokens // 4))
    while httpx.post(f"{url}/api/extra/tokencount", json={"prompt": text}).json()["value"] < tokens:
        text += " and on and on."
    return text


@pytest.mark.parametrize("api", ["textgen/koboldcpp", "textgen/ooba", "kobold"])
def test_long_chat_is_cut_as_koboldcpp_does(st_server, api):
    """A prompt longer than the context (5,223 tokens on 4,096 in the issue) is cut, not refused."""
    case = next(c for c in VERSIONS["1.12.6"]["cases"] if c["api"] == api and not c["stream"])
    prompt = long_prompt(st_server.url, int(N_CTX * 1.3))
    text, last = reply(st_server.url, case, body_of(case, prompt))
    usage = last.get("usage") or {"prompt_tokens": last.get("prompt_tokens")}
    assert isinstance(text, str) and usage["prompt_tokens"] <= N_CTX - min(350, N_CTX - N_CTX // 5)
    # a plain OpenAI client (no Kobold fields) still gets the OpenAI answer for a prompt that cannot fit
    plain = httpx.post(f"{st_server.url}/v1/completions", json={"model": "tiny", "prompt": prompt})
    assert plain.status_code == 400


def test_kobold_generate_reports_length_at_the_limit(st_server):
    case = next(c for c in VERSIONS["1.19.0"]["cases"] if c["api"] == "kobold" and not c["stream"])
    body = body_of(case, "Once upon a time", max_length=5, temperature=0)
    body.pop("stop_sequence")
    r = httpx.post(f"{st_server.url}/api/v1/generate", json={**body, "use_default_badwordsids": True})
    result = r.json()["results"][0]
    assert result["finish_reason"] == "length" and result["completion_tokens"] == 5
    stop = httpx.post(
        f"{st_server.url}/api/v1/generate", json={**body, "stop_sequence": [result["text"][1:3]]}
    )
    assert stop.json()["results"][0]["finish_reason"] == "stop"
