"""The new wire shapes as pure functions: tool calls, logprobs and `n`, no HTTP and no model."""

from __future__ import annotations

import json

import pytest
import tool_families as tf

from nanocommander.backend import tools
from nanocommander.backend.ollama import api as ollama_api
from nanocommander.backend.openai import api as openai_api
from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.types import Chunk, DoneReason, GenerateRequest, Stats, TokenLogprob
from nanocommander.engine.text.toolcalls import ToolCall
from nanocommander.errors import InvalidRequest

CALL = ToolCall("get_time", {"zone": "UTC"}, "call_1")
DONE = Chunk("", done=True, done_reason=DoneReason.STOP, stats=Stats(prompt_tokens=5, eval_count=9))


def test_openai_tool_calls_non_streamed_and_streamed():
    whole = openai_api.chat_completion("id", 1, "m", [Chunk(""), DONE], [CALL])
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'}}
    ]
    items = openai_api.chat_chunks("id", 1, "m", DONE, first=True, with_usage=False, calls=[CALL])
    deltas = [i["choices"][0]["delta"] for i in items]
    assert deltas[1]["tool_calls"][0]["index"] == 0 and json.loads(
        deltas[1]["tool_calls"][0]["function"]["arguments"]
    )
    assert items[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # a call streamed in an earlier chunk still makes the finish reason tool_calls
    late = openai_api.chat_chunks("id", 1, "m", DONE, first=False, with_usage=False, had_calls=True)
    assert late[-1]["choices"][0]["finish_reason"] == "tool_calls"
    cut = Chunk("", done=True, done_reason=DoneReason.LENGTH)
    assert openai_api.finish_reason(cut, True) == "length"


def test_ollama_tool_calls_fold():
    lines = [
        ollama_api.chat_item("m", Chunk("ok ")),
        ollama_api.chat_item("m", Chunk(""), [CALL]),
        ollama_api.chat_item("m", DONE, [ToolCall("get_weather", {"city": "Oslo"}, "c2")], first_call=1),
    ]
    folded = ollama_api.fold_chat(lines)
    assert folded["message"]["content"] == "ok " and folded["done_reason"] == "stop"
    assert [c["function"] for c in folded["message"]["tool_calls"]] == [
        {"index": 0, "name": "get_time", "arguments": {"zone": "UTC"}},
        {"index": 1, "name": "get_weather", "arguments": {"city": "Oslo"}},
    ]


def test_logprob_shapes_and_split_characters():
    e = TokenLogprob(1, b"\xc3", -0.5, (TokenLogprob(1, b"\xc3", -0.5), TokenLogprob(2, b"a", -1.0)))
    f = TokenLogprob(3, b"\xa9x", -0.25)
    chat = openai_api.chat_logprobs([e, f])
    assert chat["content"][0]["token"] == "bytes:\\xc3" and chat["content"][0]["bytes"] == [0xC3]
    assert [t["token"] for t in chat["content"][0]["top_logprobs"]] == ["bytes:\\xc3", "a"]
    legacy = openai_api.completion_logprobs([e, f, TokenLogprob(4, b"yz", -1.0)])
    assert legacy["text_offset"] == [0, 0, 2] and legacy["token_logprobs"] == [-0.5, -0.25, -1.0]
    assert ollama_api.logprob_items([f])[0] == {
        "token": "bytes:\\xa9\\x78",
        "logprob": -0.25,
        "bytes": [0xA9, 0x78],
        "top_logprobs": [],
    }


def test_plan_samples_and_logprob_requests():
    plan = tools.plan(tf.MISTRAL, None, tf.TOOLS, "required")
    req = plan.apply(GenerateRequest("p"))
    assert req.special_text == ("[TOOL_CALLS]",) and req.sampling.grammar.startswith("root ::=")
    assert tools.plan(tf.MISTRAL, None, tf.TOOLS, "none").family is None
    assert tools.plan(tf.HERMES, None, None).family is None
    with pytest.raises(InvalidRequest, match="tool_parser"):
        tools.plan("{{ messages }}", None, tf.TOOLS, "required")
    seeded = GenerateRequest("p", sampling=merge_sampling({"seed": 7}))
    assert [r.sampling.seed for r in tools.samples(seeded, 3)] == [7, 8, 9]
    assert [r.sampling.seed for r in tools.samples(GenerateRequest("p"), 2)] == [None, None]
    for bad in (0, 17, True, "2"):
        with pytest.raises(InvalidRequest):
            tools.samples(seeded, bad)
    assert tools.logprobs_request(seeded, True, 3).logprobs == 3
    assert tools.logprobs_request(seeded, 2, None, top_key="logprobs").logprobs == 2
    assert tools.logprobs_request(seeded, None, None).logprobs is None
    with pytest.raises(InvalidRequest):
        tools.logprobs_request(seeded, None, 3)
