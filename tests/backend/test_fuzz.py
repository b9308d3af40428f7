"""Property-based fuzzing of every route of the three protocols against a live server.

Bodies are generated from each route's schema: every field either valid, of a wrong type,
an extreme number or odd Unicode (lone surrogates, NUL, bidi controls, huge strings), with
fields missing and unknown ones added, sometimes as broken JSON or invalid UTF-8. Each
reply must be no 5xx, carry no traceback, use the protocol's own error shape, and the
server must still answer afterwards.

Profiles: `ci` (the default here, deterministic, about a minute for the module) and `long`
(`python bench/fuzz.py`, random seeds, many more examples).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanocommander.engine.request.options import ALL_KEYS, IGNORED_KEYS

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "400")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = os.environ.get("FUZZ_PROFILE", "ci")

# -- value strategies --------------------------------------------------------------------------

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",
    "a\udcffb",
    "\ud83d",
    "\u202e\u2066rtl",
    "\ufeff",
    "🙂👍🏽",
    "<|im_end|>",
    "<s></s>",
    "{{ 1/0 }}",
    "{% for x in y %}",
    "%s%n%x",
    "../../etc/passwd",
    "/",
    "NaN",
    "1e999",
    "sha256:" + "0" * 64,
    "hf.co/",
    "tiny:latest",
    "ÅÄÖ",
    "\n\r\t",
]
EXTREME_NUMBERS = [
    0,
    -1,
    1,
    2,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**63,
    2**64,
    10**30,
    -(10**30),
    0.5,
    -0.0,
    1.0,
    100,
    101,
    1e6,
    1e308,
    -1e308,
    5e-324,
    float("nan"),
    float("inf"),
    float("-inf"),
]

huge = st.integers(1000, 20_000).map(lambda n: "x" * n)
any_text = st.text(st.characters(exclude_categories=()), max_size=30)
lone = st.builds(lambda a, c, b: a + chr(c) + b, any_text, st.integers(0xD800, 0xDFFF), any_text)
odd_text = st.one_of(st.sampled_from(ODD_STRINGS), any_text, lone, huge)
number = st.one_of(
    st.sampled_from(EXTREME_NUMBERS), st.integers(), st.floats(allow_nan=True, allow_infinity=True)
)
scalar = st.one_of(st.none(), st.booleans(), number, odd_text)
anything = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)


def field(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly valid, sometimes anything at all (wrong type, extreme, odd Unicode, nested junk)."""
    return st.one_of(valid, valid, valid, anything)


small_int = st.one_of(st.integers(0, 8), st.integers(0, 8), st.sampled_from([-1, 2**31 - 1, 2**31, 10**30]))
prob = st.one_of(st.floats(0, 1), st.floats(0, 1), number)
model = st.sampled_from(["tiny", "tiny:latest", "TINY", "ghost", ""])
prompt = st.one_of(st.sampled_from(["hi", "Once upon a time", ""]), odd_text, odd_text)
msg = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "robot"]),
        "content": prompt,
    },
    optional={"images": anything, "tool_calls": anything, "name": odd_text},
)
messages = st.lists(field(msg), min_size=0, max_size=3)
OPTION_VALUES: dict[str, st.SearchStrategy] = {
    "temperature": st.sampled_from([0, 0.7, 1.5]),
    "num_predict": small_int,
    "top_k": small_int,
    "seed": st.integers(-1, 2**32),
    "stop": st.lists(prompt, max_size=2),
    "alpha": st.floats(-2, 2),
    "member": st.sampled_from(["composite", "large", "base", "tuned", "huge"]),
    "logit_bias": st.dictionaries(st.sampled_from(["1", "2", "-5", "x", "99999999"]), number, max_size=3),
    "dry_sequence_breakers": st.lists(odd_text, max_size=3),
    "mirostat": st.sampled_from([0, 1, 2, 3]),
    "num_ctx": st.sampled_from([64, 128, 2**40]),
}
options = st.fixed_dictionaries(
    {},
    optional={
        **{k: OPTION_VALUES.get(k, prob if float in v else small_int) for k, v in ALL_KEYS.items()},
        **{k: anything for k in sorted(IGNORED_KEYS)[:4]},
    },
)
schema = st.sampled_from(
    [None, "json", "", {"type": "object"}, {"type": "object", "properties": {"a": {"type": "integer"}}}]
)
keep_alive = st.sampled_from([None, "5m", 0, -1, "1h30m", 1e30])
kobold_fields = {
    "prompt": prompt,
    "memory": prompt,
    "max_length": small_int,
    "max_context_length": st.sampled_from([64, 96, 10**9, 0, -1]),
    "temperature": prob,
    "top_k": small_int,
    "top_p": prob,
    "min_p": prob,
    "typical": prob,
    "rep_pen": st.floats(1, 2),
    "rep_pen_range": small_int,
    "dynatemp_range": prob,
    "mirostat": st.sampled_from([0, 1, 2]),
    "dry_multiplier": prob,
    "dry_base": st.floats(1, 3),
    "xtc_threshold": prob,
    "xtc_probability": prob,
    "sampler_seed": st.integers(-1, 2**32),
    "stop_sequence": st.lists(prompt, max_size=2),
    "trim_stop": st.booleans(),
    "ban_eos_token": st.booleans(),
    "bypass_eos": st.booleans(),
    "genkey": odd_text,
    "logit_bias": OPTION_VALUES["logit_bias"],
    "banned_tokens": st.one_of(st.lists(odd_text, max_size=3), odd_text),
    "custom_token_bans": odd_text,
    "grammar": st.one_of(st.sampled_from(['root ::= "a"', "root ::= ", ""]), schema, odd_text),
    "alpha": st.floats(-2, 2),
    "member": OPTION_VALUES["member"],
    "sampler_order": anything,
    "top_a": anything,
}
openai_fields = {
    "model": model,
    "temperature": prob,
    "top_p": prob,
    "max_tokens": small_int,
    "max_completion_tokens": small_int,
    "stop": st.one_of(prompt, st.lists(prompt, max_size=2)),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "seed": st.integers(-1, 2**32),
    "presence_penalty": prob,
    "frequency_penalty": prob,
    "logit_bias": OPTION_VALUES["logit_bias"],
    "response_format": st.sampled_from(
        [
            {"type": "text"},
            {"type": "json_object"},
            {"type": "xml"},
            {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        ]
    ),
    "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": anything}), max_size=2),
    "n": small_int,
    "user": odd_text,
    "alpha": st.floats(-2, 2),
    "member": OPTION_VALUES["member"],
    "top_k": small_int,
    "min_p": prob,
    "repeat_penalty": st.floats(1, 2),
}


@st.composite
def body(draw, required: dict[str, Any], optional: dict[str, Any]) -> dict[str, Any]:
    """A valid-typed object (its text and numbers may still be odd or extreme), then up to three
    mutations: a field replaced by anything, a field dropped, an unknown field added."""
    value = draw(
        st.fixed_dictionaries(required, optional={k: v for k, v in optional.items() if k not in required})
    )
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["junk", "drop", "extra"]))
        if kind != "extra" and value:
            key = draw(st.sampled_from(sorted(value)))
            if kind == "junk":
                value[key] = draw(anything)
            else:
                del value[key]
        else:
            value[draw(odd_text)] = draw(anything)
    return value


# -- routes ------------------------------------------------------------------------------------


class Route:
    """One route: its protocol (the error envelope expected), method, path (a strategy for routes
    with a path parameter), body strategy, and `own_error` for routes with their own error body.
    A plain class: hypothesis prints dataclasses field by field, strategies and all."""

    def __init__(
        self,
        protocol: str,
        method: str,
        path: str | st.SearchStrategy,
        body: st.SearchStrategy | None = None,
        own_error: Callable[[Any], bool] | None = None,
    ):
        self.protocol, self.method, self.path, self.body, self.own_error = (
            protocol,
            method,
            path,
            body,
            own_error,
        )

    def __repr__(self) -> str:
        return f"Route({self.method} {self.path if isinstance(self.path, str) else '<path>'})"


def _p(strategy: st.SearchStrategy, prefix: str) -> st.SearchStrategy:
    """A path parameter, percent-encoded byte for byte (lone surrogates become invalid UTF-8)."""
    return strategy.map(lambda s: prefix + quote(s.encode("utf-8", "surrogatepass"), safe=":"))


digest = st.one_of(
    st.just("sha256:" + "a" * 64),
    st.text(st.characters(codec="ascii"), max_size=70).map(
        lambda s: s.replace("/", "").replace("?", "").replace("#", "")
    ),
)

OLLAMA = [
    Route(
        "ollama",
        "POST",
        "/api/generate",
        body(
            {"model": model, "prompt": prompt},
            {
                "system": prompt,
                "template": st.sampled_from(
                    ["{% for m in messages %}{{ m.content }}{% endfor %}", "{{ 1/0 }}"]
                ),
                "raw": st.booleans(),
                "context": st.lists(st.integers(0, 300), max_size=4),
                "stream": st.booleans(),
                "format": schema,
                "keep_alive": keep_alive,
                "options": options,
                "suffix": prompt,
                "images": anything,
            },
        ),
    ),
    Route(
        "ollama",
        "POST",
        "/api/chat",
        body(
            {"model": model, "messages": messages},
            {
                "tools": st.lists(anything, max_size=2),
                "format": schema,
                "stream": st.booleans(),
                "keep_alive": keep_alive,
                "options": options,
            },
        ),
    ),
    Route("ollama", "POST", "/api/show", body({"model": model}, {"name": model, "verbose": st.booleans()})),
    Route("ollama", "POST", "/api/embed", body({"model": model, "input": prompt}, {})),
    Route("ollama", "POST", "/api/embeddings", body({"model": model, "prompt": prompt}, {})),
    Route(
        "ollama",
        "POST",
        "/api/copy",
        body({"source": model, "destination": st.sampled_from(["fz-copy", "a/b/c/d/e", ""])}, {}),
    ),
    Route(
        "ollama",
        "DELETE",
        "/api/delete",
        body({"model": st.sampled_from(["fz-copy", "fz-made", "tiny", "ghost"])}, {}),
    ),
    Route(
        "ollama",
        "POST",
        "/api/create",
        body(
            {"model": st.sampled_from(["fz-made", "bad name!", ""])},
            {
                "from": model,
                "files": st.dictionaries(odd_text, digest, max_size=2),
                "recipe": odd_text,
                "system": prompt,
                "template": prompt,
                "parameters": options,
                "messages": messages,
                "stream": st.booleans(),
            },
        ),
    ),
    Route(
        "ollama",
        "POST",
        "/api/pull",
        body(
            {"model": st.sampled_from(["ghost", "fz-made", "x/y:z"])},
            {"stream": st.booleans(), "insecure": anything},
        ),
    ),
    Route(
        "ollama",
        "POST",
        "/api/push",
        body(
            {"model": st.sampled_from(["ghost", "fz-made"])},
            {"destination": odd_text, "stream": st.booleans()},
        ),
    ),
    Route("ollama", "GET", "/api/tags"),
    Route("ollama", "GET", "/api/ps"),
    Route("ollama", "GET", "/api/version"),
    Route("ollama", "HEAD", _p(digest, "/api/blobs/")),
    Route("ollama", "POST", _p(digest, "/api/blobs/"), st.binary(max_size=64)),
]
OPENAI = [
    Route(
        "openai", "POST", "/v1/chat/completions", body({"model": model, "messages": messages}, openai_fields)
    ),
    Route(
        "openai",
        "POST",
        "/v1/completions",
        body(
            {"model": model, "prompt": prompt},
            {**openai_fields, **{k: v for k, v in kobold_fields.items() if k not in openai_fields}},
        ),
    ),
    Route("openai", "GET", "/v1/models"),
    Route("openai", "GET", _p(st.one_of(any_text, lone, st.sampled_from(ODD_STRINGS)), "/v1/models/")),
]
_kobold_value = lambda b: isinstance(b, dict) and ("value" in b or "success" in b)  # noqa: E731
KOBOLD = [
    Route("kobold", "POST", "/api/v1/generate", body({"prompt": prompt}, kobold_fields)),
    Route("kobold", "POST", "/api/extra/generate/stream", body({"prompt": prompt}, kobold_fields)),
    Route("kobold", "POST", "/api/extra/generate/check", body({}, {"genkey": odd_text})),
    Route("kobold", "POST", "/api/extra/abort", body({}, {"genkey": odd_text})),
    Route(
        "kobold",
        "POST",
        "/api/extra/tokencount",
        body({"prompt": prompt}, {"special": st.booleans()}),
        _kobold_value,
    ),
    Route(
        "kobold",
        "POST",
        "/api/extra/tokenize",
        body({"prompt": prompt}, {"special": st.booleans()}),
        _kobold_value,
    ),
    Route(
        "kobold",
        "POST",
        "/api/extra/detokenize",
        body({"ids": st.lists(st.integers(-5, 2**40), max_size=5)}, {}),
        _kobold_value,
    ),
    *[
        Route("kobold", "GET", p)
        for p in (
            "/api/v1/model",
            "/api/v1/info/version",
            "/api/v1/config/max_length",
            "/api/v1/config/max_context_length",
            "/api/extra/version",
            "/api/extra/true_max_context_length",
            "/api/extra/perf",
            "/api/extra/generate/check",
            "/props",
            "/api/latest/model",
        )
    ],
]
PROTOCOLS = {"ollama": OLLAMA, "openai": OPENAI, "kobold": KOBOLD}


def encoded(value: Any, how: int) -> bytes:
    """The body as bytes: JSON (ASCII-escaped or raw UTF-8 with surrogates passed through), or junk."""
    if isinstance(value, bytes):
        return value
    if how == 0:
        return json.dumps(value).encode()
    if how == 1:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(value)[: max(len(json.dumps(value)) // 2, 1)].encode()  # cut short


@st.composite
def calls(draw, routes: list[Route]) -> tuple[Route, str, bytes | None]:
    route = draw(st.sampled_from(routes))
    path = route.path if isinstance(route.path, str) else draw(route.path)
    if route.body is None:
        return route, path, None
    value = draw(st.one_of(route.body, route.body, route.body, anything, st.binary(max_size=40)))
    return route, path, encoded(value, draw(st.sampled_from([0, 0, 0, 1, 2])))


# -- the property ------------------------------------------------------------------------------


def error_shape_ok(protocol: str, body: Any) -> bool:
    if protocol == "openai":
        e = body.get("error") if isinstance(body, dict) else None
        return (
            isinstance(e, dict)
            and set(e) == {"message", "type", "param", "code"}
            and isinstance(e["message"], str)
        )
    if protocol == "kobold":
        d = body.get("detail") if isinstance(body, dict) else None
        return isinstance(d, dict) and isinstance(d.get("msg"), str) and isinstance(d.get("type"), str)
    return isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)


def check(client: httpx.Client, route: Route, path: str, data: bytes | None) -> None:
    if os.environ.get("FUZZ_LOG"):
        with open(os.environ["FUZZ_LOG"], "a") as log:
            log.write(f"{route.method} {path} {data!r}\n")
    r = client.request(route.method, path, content=data, headers={"Content-Type": "application/json"})
    text = r.text
    where = f"{route.method} {path} {data[:300] if data else data!r} -> {r.status_code} {text[:300]}"
    assert r.status_code < 500, where
    assert "Traceback" not in text and 'File "/' not in text and "internal error" not in text, where
    if r.status_code >= 400 and route.method != "HEAD":
        body = r.json()
        assert error_shape_ok(route.protocol, body) or (route.own_error and route.own_error(body)), where
    for line in text.splitlines():  # streamed NDJSON/SSE: an error line must not be a bug's
        line = line.removeprefix("data: ")
        if line.startswith("{"):
            item = json.loads(line)
            assert not (isinstance(item, dict) and "internal" in str(item.get("error", ""))), where


def healthy(client: httpx.Client) -> None:
    """The server still answers, and still generates, in every protocol."""
    assert client.get("/api/version").status_code == 200
    r = client.post(
        "/api/generate",
        json={"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
    )
    assert r.status_code == 200 and r.json()["done"], r.text
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["choices"], r.text
    r = client.post("/api/v1/generate", json={"prompt": "hi", "max_length": 2})
    assert r.status_code == 200 and "results" in r.json(), r.text


# -- tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(start_server, recipe_of):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing leaves the machine
    mp.setenv("HF_HUB_OFFLINE", "1")
    # a small context keeps every generation short, whatever num_predict the fuzzer picks
    live = start_server(
        [recipe_of("tiny", extra="parameters: {num_ctx: 96, num_predict: 6}\n")], max_body=256 * 1024
    )
    yield live
    mp.undo()


@pytest.fixture
def client(fuzz_server):
    with httpx.Client(base_url=fuzz_server.url, timeout=60) as c:
        yield c
        healthy(c)


def fuzz(client: httpx.Client, routes: list[Route], **overrides: Any) -> None:
    @settings(settings.get_profile(PROFILE), **overrides)
    @given(calls(routes))
    def prop(call: tuple[Route, str, bytes | None]) -> None:
        check(client, *call)

    prop()


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_no_input_gives_a_500_a_traceback_or_a_foreign_error_shape(client, protocol):
    fuzz(client, PROTOCOLS[protocol])


def test_breaking_a_validator_is_caught(client, monkeypatch):
    """With the surrogate check off, the fuzzer must find a 500 (the property can fail)."""
    from nanocommander.backend import guard

    monkeypatch.setattr(guard, "check_tree", lambda value: None)
    routes = [r for r in OLLAMA if r.path == "/api/generate"]
    with pytest.raises(AssertionError, match="-> 500"):
        fuzz(client, routes, max_examples=500)
