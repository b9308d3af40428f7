"""The playground at /studio: served with the API's guard, right content types; provenance on the wire."""

from __future__ import annotations

import json

import httpx
import pytest

GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 10, "provenance": True}
SOURCES = {"large", "steered", "tuned"}


@pytest.mark.parametrize(
    "path,ctype",
    [
        ("/studio", "text/html"),
        ("/studio/", "text/html"),
        ("/studio/index.html", "text/html"),
        ("/studio/app.js", "text/javascript"),
        ("/studio/chart.js", "text/javascript"),
        ("/studio/style.css", "text/css"),
    ],
)
def test_assets_served_with_content_types(server, path, ctype):
    r = httpx.get(server.url + path, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == f"{ctype}; charset=utf-8"
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_page_references_only_its_own_files(server):
    html = httpx.get(server.url + "/studio", timeout=30).text
    assert (
        "/studio/app.js" in html and "/studio/style.css" in html and "http" not in html.replace("http-", "")
    )


def test_unknown_file_is_404(server):
    for path in ("/studio/../server.py", "/studio/routes.py", "/studio/nope.js"):
        assert httpx.get(server.url + path, timeout=30).status_code == 404


def test_disallowed_origin_gets_403(server):
    r = httpx.get(server.url + "/studio", headers={"Origin": "https://evil.example"}, timeout=30)
    assert r.status_code == 403 and "origin" in r.json()["error"]
    rebound = httpx.get(server.url + "/studio", headers={"Host": "evil.example"}, timeout=30)
    assert rebound.status_code == 403


def test_works_from_localhost_port(server):
    port = server.url.rsplit(":", 1)[1]
    origin = f"http://localhost:{port}"
    page = httpx.get(f"http://localhost:{port}/studio", headers={"Origin": origin}, timeout=30)
    assert page.status_code == 200
    tags = httpx.get(server.url + "/api/tags", headers={"Origin": origin}, timeout=30)
    assert tags.status_code == 200 and tags.headers["access-control-allow-origin"] == origin


def test_page_needs_no_key_but_the_api_does(start_server, recipe_of):
    live = start_server([recipe_of("tiny")], api_key="sekrit")
    assert httpx.get(live.url + "/studio", timeout=30).status_code == 200
    assert httpx.get(live.url + "/studio/app.js", timeout=30).status_code == 200
    assert httpx.get(live.url + "/studio/nope.js", timeout=30).status_code == 401  # only the shipped files
    assert httpx.get(live.url + "/api/tags", timeout=30).status_code == 401
    ok = httpx.get(live.url + "/api/tags", headers={"Authorization": "Bearer sekrit"}, timeout=30)
    assert ok.status_code == 200


def _lines(r):
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def test_ollama_chat_stream_carries_provenance(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "options": GREEDY}
    lines = _lines(httpx.post(server.url + "/api/chat", json=body, timeout=60))
    entries = [e for item in lines for e in item.get("provenance") or ()]
    assert entries and {e["source"] for e in entries} <= SOURCES
    assert all(0 < e["p_fused"] <= 1 and set(e) >= {"token", "id", "p_large", "large_token"} for e in entries)
    for item in lines:
        if item["message"]["content"]:
            assert "provenance" in item
    assert len(entries) == lines[-1]["eval_count"] or len(entries) == lines[-1]["eval_count"] - 1
    folded = httpx.post(server.url + "/api/chat", json={**body, "stream": False}, timeout=60).json()
    assert [e["id"] for e in folded["provenance"]] == [e["id"] for e in entries]
    plain = {**body, "options": {**GREEDY, "provenance": False}}
    assert all("provenance" not in item for item in _lines(httpx.post(server.url + "/api/chat", json=plain)))


def test_openai_and_kobold_take_it_top_level(server):
    msgs = [{"role": "user", "content": "Hi"}]
    chat = {"model": "tiny", "messages": msgs, "temperature": 0, "max_tokens": 8, "provenance": True}
    reply = httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=60).json()
    assert {e["source"] for e in reply["choices"][0]["provenance"]} <= SOURCES
    without = httpx.post(server.url + "/v1/chat/completions", json={**chat, "provenance": None}, timeout=60)
    assert "provenance" not in without.json()["choices"][0]
    stream = httpx.post(server.url + "/v1/chat/completions", json={**chat, "stream": True}, timeout=60).text
    chunks = [json.loads(x[6:]) for x in stream.splitlines() if x.startswith("data: {")]
    assert any(c["choices"] and "provenance" in c["choices"][0] for c in chunks)
    kobold = {"prompt": "Once upon", "max_length": 8, "temperature": 0.01, "provenance": True}
    result = httpx.post(server.url + "/api/v1/generate", json=kobold, timeout=60).json()["results"][0]
    assert result["provenance"] and {e["source"] for e in result["provenance"]} <= SOURCES


def test_generate_and_kobold_stream_carry_provenance(server):
    body = {"model": "tiny", "prompt": "Once upon", "stream": False, "options": GREEDY}
    folded = httpx.post(server.url + "/api/generate", json=body, timeout=60).json()
    assert len(folded["provenance"]) in (folded["eval_count"], folded["eval_count"] - 1)
    kobold = {"prompt": "Once upon", "max_length": 8, "temperature": 0.01, "provenance": True}
    events = httpx.post(server.url + "/api/extra/generate/stream", json=kobold, timeout=60).text
    data = [json.loads(x[6:]) for x in events.splitlines() if x.startswith("data: ")]
    assert any(d.get("provenance") for d in data)
    assert all("provenance" not in d for d in _sse(server, {**kobold, "provenance": False}))


def _sse(server, body):
    text = httpx.post(server.url + "/api/extra/generate/stream", json=body, timeout=60).text
    return [json.loads(x[6:]) for x in text.splitlines() if x.startswith("data: ")]
