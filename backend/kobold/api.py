"""KoboldCpp's generation fields -> engine options (shared by /api/v1/generate and /v1/completions).

KoboldCpp parses its fields leniently, and SillyTavern relies on that: its Text Completion
body sends `dry_sequence_breakers` as a JSON-encoded string (1.12) or a list (1.13+),
`custom_token_bans` as "1,2,3", and numbers straight from its settings (which a preset
may hold as strings). `lenient()` accepts those shapes once, here, so the engine's
option check sees plain lists and numbers.

Fields llama.cpp's samplers cannot honour are accepted and ignored: top_a, tfs,
rep_pen_slope, smoothing_factor, sampler_order, banned_strings, render_special
(listed in the README). `use_default_badwordsids` bans EOS, as in KoboldCpp.
"""

from __future__ import annotations

import json
import math
from typing import Any

from nanocommander.engine.request.options import check_value
from nanocommander.engine.text.grammar import json_grammar
from nanocommander.errors import InvalidRequest

MAPPING = {
    "max_length": "num_predict",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical": "typical_p",
    "rep_pen": "repeat_penalty",
    "rep_pen_range": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "dynatemp_range": "dynatemp_range",
    "dynatemp_exponent": "dynatemp_exponent",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "dry_multiplier": "dry_multiplier",
    "dry_base": "dry_base",
    "dry_allowed_length": "dry_allowed_length",
    "dry_penalty_last_n": "dry_penalty_last_n",
    "dry_sequence_breakers": "dry_sequence_breakers",
    "xtc_threshold": "xtc_threshold",
    "xtc_probability": "xtc_probability",
    "sampler_seed": "seed",
    "stop_sequence": "stop",
    "alpha": "alpha",
    "member": "member",
    "steer": "steer",
    "speculative": "speculative",
    "provenance": "provenance",
}
# Numeric fields a Kobold-style body may carry (Kobold's own names and the OpenAI/text-generation-webui
# names SillyTavern sends beside them), with whether each is an integer.
NUMBERS: dict[str, bool] = {
    **{
        k: False
        for k in MAPPING
        if k not in ("dry_sequence_breakers", "stop_sequence", "member", "provenance")
    },
    **{
        k: True
        for k in (
            "max_length",
            "top_k",
            "rep_pen_range",
            "mirostat",
            "dry_allowed_length",
            "dry_penalty_last_n",
            "sampler_seed",
            "max_context_length",
            "truncation_length",
            "max_tokens",
            "seed",
        )
    },
    "repeat_penalty": False,
}
IGNORED = (
    "top_a",
    "tfs",
    "rep_pen_slope",
    "smoothing_factor",
    "sampler_order",
    "banned_strings",
    "render_special",
    "quiet",
    "n",
    "max_context_length",
)
# Fields only Kobold-style clients send (KoboldCpp's own, or SillyTavern's Text Completion body, which
# names its API type): such a /v1/completions request gets KoboldCpp's context policy, not a 400.
MARKERS = frozenset(
    {
        "max_length",
        "max_context_length",
        "truncation_length",
        "rep_pen",
        "sampler_order",
        "genkey",
        "api_type",
    }
)


def is_kobold(body: dict[str, Any]) -> bool:
    return not MARKERS.isdisjoint(body)


def _number(value: Any, integer: bool) -> Any:
    """Numbers in strings ("0.7", "40") parsed, and 40.0 -> 40 for integer fields; else `value` unchanged."""
    if isinstance(value, str):
        try:
            parsed = float(value.strip())
        except ValueError:
            return value
        if math.isfinite(parsed):
            value = parsed
    if integer and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def sequence_breakers(value: Any) -> list[str]:
    """A list of strings, a string holding a JSON list (SillyTavern 1.12), or one plain breaker."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        value = parsed if isinstance(parsed, list) else [parsed if isinstance(parsed, str) else value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise InvalidRequest('"dry_sequence_breakers" must be a list of strings or a JSON-encoded list')
    return [s for s in value if s]


def lenient(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of `body` with the shapes KoboldCpp accepts made plain: numbers in strings parsed,
    `dry_sequence_breakers` a list, and text-generation-webui's `grammar_string` as `grammar`."""
    out = dict(body)
    for key, integer in NUMBERS.items():
        if out.get(key) is not None:
            out[key] = _number(out[key], integer)
    if out.get("dry_sequence_breakers") is not None:
        out["dry_sequence_breakers"] = sequence_breakers(out["dry_sequence_breakers"])
    if not out.get("grammar") and isinstance(out.get("grammar_string"), str):
        out["grammar"] = out["grammar_string"]
    return out


def context_limit(body: dict[str, Any], n_ctx: int) -> int:
    """The context a Kobold-style request asks for (`max_context_length`, or text-generation-webui's
    `truncation_length`), clamped to the model's; the model's when it names none."""
    for key in ("max_context_length", "truncation_length"):
        value = _number(body.get(key), True)
        if value is None or value == 0:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidRequest(f'"{key}" must be a positive integer')
        return min(value, n_ctx)
    return n_ctx


def kobold_options(body: dict[str, Any]) -> dict[str, Any]:
    """Kobold fields -> validated engine options; a wrong type names the Kobold field."""
    body = lenient(body)
    opts: dict[str, Any] = {}
    for src, dst in MAPPING.items():
        value = body.get(src)
        if value is None:
            continue
        if src == "sampler_seed" and isinstance(value, int) and value < 0:
            continue
        try:
            opts[dst] = check_value(dst, value)
        except InvalidRequest as exc:
            raise InvalidRequest(str(exc).replace(f'option "{dst}"', f'"{src}"')) from None
    bias: dict[int, float] = {}
    if isinstance(body.get("logit_bias"), dict):
        for k, v in body["logit_bias"].items():
            try:
                bias[int(k)] = float(v)
            except (TypeError, ValueError, OverflowError):
                continue
    for key in ("banned_tokens", "custom_token_bans"):
        value = body.get(key)
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
        for item in items:
            try:
                bias[int(str(item).strip())] = float("-inf")
            except ValueError:
                continue
    if bias:
        opts["logit_bias"] = bias
    grammar = body.get("grammar")
    if isinstance(grammar, dict):
        opts["grammar"] = json_grammar(grammar)
    elif isinstance(grammar, str) and grammar.strip():
        opts["grammar"] = grammar
    return opts


def fit_context(ids: list[int], options: dict[str, Any], max_ctx: int, keep: int = 1) -> list[int]:
    """KoboldCpp's habit: clamp max_length, then cut the oldest prompt text (after the first `keep`
    tokens: BOS and any `memory`) so prompt and reply fit `max_ctx`, instead of refusing the request.

    As KoboldCpp does, at least max(min(ctx - 4, 16), ctx / 5) tokens stay for the prompt; with no
    max_length the reply gets what the (cut) prompt leaves. A DRY window of 0 becomes the context.
    """
    wanted = int(options.get("num_predict", -1))
    floor = max(min(max_ctx - 4, 16), max_ctx // 5, 1)
    if wanted >= 0:
        wanted = min(wanted, max_ctx - floor)
        budget = max_ctx - wanted
    else:
        budget = max_ctx - 1 if len(ids) < max_ctx else max(max_ctx // 2, 1)
    if len(ids) > budget:
        keep = min(keep, budget - 1)
        ids = ids[:keep] + ids[len(ids) - (budget - keep) :]
    room = max_ctx - len(ids)
    options["num_predict"] = room if wanted < 0 else min(wanted, room)
    if options.get("dry_multiplier", 0) > 0 and options.get("dry_penalty_last_n", 0) <= 0:
        # Kobold clients mean "the whole context" by 0 (and -1); llama.cpp's DRY sampler, built
        # without the context size, would take either as "off".
        options["dry_penalty_last_n"] = max_ctx
    return ids


ERROR_TYPES = {
    400: "bad_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    503: "service_unavailable",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """KoboldCpp's error envelope: {"detail": {"msg", "type"}}."""
    return {"detail": {"msg": message, "type": ERROR_TYPES.get(status, "server_error")}}
