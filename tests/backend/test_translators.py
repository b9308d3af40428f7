"""The protocol translators as pure functions: wire body -> parsed call, Chunk -> wire object."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from nanocommander.backend.config import Settings, parse_duration, parse_host
from nanocommander.backend.guard import is_loopback
from nanocommander.backend.ollama import api as ollama_api
from nanocommander.backend.openai import api as openai_api
from nanocommander.engine.request.types import Chunk, DoneReason, Stats
from nanocommander.errors import InvalidRequest

STATS = Stats(load_s=0.5, prompt_tokens=7, prompt_eval_s=0.25, eval_count=3, eval_s=0.125, total_s=1.0)
PIECES = [Chunk("Hel"), Chunk("lo"), Chunk("", done=True, done_reason=DoneReason.STOP, stats=STATS)]


# -- Ollama ------------------------------------------------------------------------------------


def test_generate_body_parses_once_with_types_checked():
    call = ollama_api.parse_generate(
        {
            "model": "m",
            "prompt": "p",
            "system": "s",
            "keep_alive": "1h30m",
            "format": "json",
            "options": {"temperature": 0, "mirostat": 0, "tfs_z": 1, "unknown": 1},
            "stream": False,
            "extra": 1,
        }
    )
    assert (call.model, call.prompt, call.system, call.stream) == ("m", "p", "s", False)
    assert call.keep_alive == 5400 and call.grammar and not call.lifecycle
    assert call.options == {"temperature": 0.0, "mirostat": 0}  # retired/unknown keys dropped
    assert ollama_api.parse_generate({"name": "m"}).lifecycle  # deprecated alias of model


@pytest.mark.parametrize(
    "body,message",
    [
        ({}, "model is required"),
        ({"model": 3}, '"model" must be a string'),
        ({"model": "m", "prompt": 1}, '"prompt" must be a string'),
        ({"model": "m", "stream": "yes"}, '"stream" must be a boolean'),
        ({"model": "m", "options": []}, '"options" must be an object'),
        ({"model": "m", "options": {"num_predict": "10"}}, 'option "num_predict" must be of type int'),
        ({"model": "m", "options": {"temperature": True}}, 'option "temperature" must be of type number'),
        ({"model": "m", "keep_alive": "forever"}, "keep_alive"),
        ({"model": "m", "context": ["a"]}, '"context" must be a list of token ids'),
        ({"model": "m", "format": "xml"}, "format"),
        ({"model": "m", "raw": True, "system": "s", "prompt": "x"}, "raw mode does not support"),
        ({"model": "m", "raw": True, "context": [1], "prompt": "x"}, "raw mode does not support"),
    ],
)
def test_generate_body_errors(body, message):
    with pytest.raises(InvalidRequest, match=message):
        ollama_api.parse_generate(body)


def test_chat_messages_are_normalised_and_checked():
    call = ollama_api.parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "User", "content": "hi", "images": ["x"]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
                },
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
    )
    assert call.messages[0] == {"role": "user", "content": "hi"}
    assert call.messages[1]["content"] == "" and call.messages[1]["tool_calls"][0]["function"]["name"] == "f"
    assert call.messages[2]["tool_name"] == "f" and call.tools and call.stream
    for bad in ([{"role": "wizard", "content": "x"}], [{"role": "user", "content": 5}], ["hi"], "hi"):
        with pytest.raises(InvalidRequest):
            ollama_api.parse_chat({"model": "m", "messages": bad})


def test_chat_items_carry_role_and_content_on_every_line_and_fold_like_the_stream():
    items = [ollama_api.chat_item("m:latest", c) for c in PIECES]
    assert all(
        i["message"] == {"role": "assistant", "content": c.text} for i, c in zip(items, PIECES, strict=True)
    )
    last = items[-1]
    assert last["done"] and last["done_reason"] == "stop"
    assert last["total_duration"] == 1_500_000_000 and last["load_duration"] == 500_000_000
    assert last["prompt_eval_count"] == 7 and last["eval_count"] == 3 and last["eval_duration"] == 125_000_000
    assert ollama_api.fold_chat(items)["message"] == {"role": "assistant", "content": "Hello"}
    datetime.fromisoformat(last["created_at"])  # Open WebUI and ollama-python parse it


def test_generate_items_put_context_on_the_final_line_only_outside_raw_mode():
    items = [ollama_api.generate_item("m", c, [1, 2, 3]) for c in PIECES]
    assert "context" not in items[0] and items[-1]["context"] == [1, 2, 3]
    assert "context" not in ollama_api.generate_item("m", PIECES[-1], None)
    assert ollama_api.fold_generate(items)["response"] == "Hello"
    length = Chunk("", done=True, done_reason=DoneReason.LENGTH, stats=STATS)
    assert ollama_api.generate_item("m", length)["done_reason"] == "length"


def test_lifecycle_items():
    assert ollama_api.lifecycle_item("m", "unload", chat=False)["done_reason"] == "unload"
    loaded = ollama_api.lifecycle_item("m", "load", chat=True)
    assert loaded["message"] == {"role": "assistant", "content": ""} and loaded["done"]


def test_show_helpers():
    text = ollama_api.parameters_text({"stop": ["<|im_end|>", "x"], "temperature": 0.5, "flag": True})
    assert text.splitlines() == [
        f'{"stop":<30} "<|im_end|>"',
        f'{"stop":<30} "x"',
        f"{'temperature':<30} 0.5",
        f"{'flag':<30} true",
    ]
    assert ollama_api.capabilities("{% if tools %}..{% endif %}") == ["completion", "tools"]
    assert ollama_api.capabilities(None) == ["completion"]
    described = {
        "size": 1,
        "digest": "d",
        "alpha": 1.0,
        "members": {
            "large": {
                "architecture": "llama",
                "parameter_count": 2_500_000_000,
                "quantization": "Q4_K_M",
                "chat_template": "long",
            }
        },
    }
    entry = ollama_api.ps_entry("m:latest", described, float("inf"), 512)
    assert datetime.fromisoformat(entry["expires_at"]).year >= datetime.now().year + 9
    assert entry["details"]["parameter_size"] == "2.5B" and entry["context_length"] == 512
    tag = ollama_api.tag_entry("m:latest", described, 0)
    assert "chat_template" not in tag["composite"]["members"]["large"]


# -- OpenAI ------------------------------------------------------------------------------------


def test_openai_options_defaults_and_mapping():
    opts = openai_api.options({"max_tokens": 5, "stop": "x", "alpha": 0, "member": "large", "user": "u"})
    assert opts["temperature"] == 1.0 and opts["top_p"] == 1.0  # OpenAI's defaults, not the recipe's
    assert opts["num_predict"] == 5 and opts["stop"] == ("x",) and opts["alpha"] == 0.0
    assert openai_api.options({"max_completion_tokens": 9})["num_predict"] == 9
    with pytest.raises(InvalidRequest, match='"max_tokens" must be of type int'):
        openai_api.options({"max_tokens": "5"})
    with pytest.raises(InvalidRequest, match='"member" must be one of'):
        openai_api.options({"member": "huge"})


def test_openai_messages():
    out = openai_api.messages(
        [
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url"},
                    {"type": "text", "text": "b"},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
                ],
            },
            {"role": "tool", "content": "2", "tool_call_id": "c1"},
        ]
    )
    assert out[0] == {"role": "system", "content": "be brief"} and out[1]["content"] == "ab"
    assert out[2]["tool_calls"][0]["function"]["arguments"] == {"x": 1} and out[3]["tool_call_id"] == "c1"
    with pytest.raises(InvalidRequest, match="too short"):
        openai_api.messages([])
    with pytest.raises(InvalidRequest):
        openai_api.messages([{"role": "user", "content": 3}])
    with pytest.raises(InvalidRequest):
        openai_api.messages(
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]
        )


def test_response_format():
    assert openai_api.response_grammar({}) is None
    assert openai_api.response_grammar({"response_format": {"type": "text"}}) is None
    assert "root" in openai_api.response_grammar({"response_format": {"type": "json_object"}})
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert openai_api.response_grammar(
        {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    )
    with pytest.raises(InvalidRequest):
        openai_api.response_grammar({"response_format": {"type": "yaml"}})


def test_chat_chunks_sequence_with_usage():
    items = []
    for i, c in enumerate(PIECES):
        items += openai_api.chat_chunks("id", 1, "m", c, first=i == 0, with_usage=True)
    assert items[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(i["choices"][0]["delta"].get("content", "") for i in items if i["choices"]) == "Hello"
    assert items[-2]["choices"][0]["finish_reason"] == "stop" and items[-2]["choices"][0]["delta"] == {}
    assert items[-1]["choices"] == [] and items[-1]["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
    }
    whole = openai_api.chat_completion("id", 1, "m", PIECES)
    assert whole["choices"][0]["message"]["content"] == "Hello" and whole["usage"]["total_tokens"] == 10
    json.dumps(items)


def test_openai_error_envelope():
    body = openai_api.error_body(404, "model 'x' not found")
    assert body == {
        "error": {
            "message": "model 'x' not found",
            "type": "not_found_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    assert openai_api.error_body(400, "bad")["error"]["type"] == "invalid_request_error"
    assert openai_api.error_body(500, "bug")["error"]["type"] == "api_error"


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        (None, ("127.0.0.1", 11434)),
        ("0.0.0.0", ("0.0.0.0", 11434)),
        (":8080", ("127.0.0.1", 8080)),
        ("http://localhost:9000/", ("localhost", 9000)),
        ("[::1]:7000", ("::1", 7000)),
    ],
)
def test_parse_host_as_ollama_host(value, expected):
    assert parse_host(value) == expected


def test_durations_and_loopback():
    assert parse_duration("5m", 0) == 300 and parse_duration(-1, 0) == -1 and parse_duration("0", 9) == 0
    assert parse_duration(None, 300) == 300 and parse_duration("1h2m3s", 0) == 3723
    with pytest.raises(ValueError):
        parse_duration("soon", 0)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert is_loopback("app.localhost") and is_loopback("[::1]") and is_loopback("LOCALHOST")  # one rule


def test_settings_from_env_and_the_auth_rule(monkeypatch):
    monkeypatch.setenv("NANOCOMMANDER_HOST", "0.0.0.0:1234")
    monkeypatch.setenv("NANOCOMMANDER_KEEP_ALIVE", "10m")
    monkeypatch.setenv("NANOCOMMANDER_NUM_PARALLEL", "2")
    monkeypatch.setenv("NANOCOMMANDER_MAX_QUEUE", "3")
    monkeypatch.setenv("NANOCOMMANDER_ORIGINS", "https://app.example, http://x.test:3000")
    s = Settings.from_env()
    assert (s.host, s.port, s.keep_alive, s.num_parallel, s.max_queue) == ("0.0.0.0", 1234, 600, 2, 3)
    with pytest.raises(SystemExit, match="NANOCOMMANDER_API_KEY"):
        s.check()  # beyond loopback without a key
    Settings.from_env(insecure_no_auth=True).check()
    monkeypatch.setenv("NANOCOMMANDER_API_KEY", "k")
    Settings.from_env().check()
    assert s.origin_allowed("https://app.example") and s.origin_allowed("http://localhost:5173")
    assert not s.origin_allowed("https://evil.example")


@pytest.mark.parametrize(
    "key,value",
    [
        ("NANOCOMMANDER_NUM_PARALLEL", "two"),
        ("NANOCOMMANDER_MAX_QUEUE", "0"),
        ("NANOCOMMANDER_KEEP_ALIVE", "soon"),
        ("NANOCOMMANDER_HOST", "host:port"),
    ],
)
def test_a_malformed_setting_stops_startup_with_its_name(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit, match="bad server setting"):
        Settings.from_env()
