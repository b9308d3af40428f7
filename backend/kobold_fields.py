"""KoboldCpp's generation fields -> engine options (shared by /api/v1/generate and /v1/completions).

Fields llama.cpp's samplers cannot honour are accepted and ignored: top_a, tfs,
rep_pen_slope, smoothing_factor, sampler_order, banned_strings, render_special
(listed in the README).
"""

from __future__ import annotations

from typing import Any

from nanocommander.engine.grammar import json_grammar

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
}
INT_FIELDS = {
    "max_length",
    "top_k",
    "rep_pen_range",
    "mirostat",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "sampler_seed",
}
IGNORED = (
    "top_a",
    "tfs",
    "rep_pen_slope",
    "smoothing_factor",
    "sampler_order",
    "banned_strings",
    "render_special",
    "use_default_badwordsids",
    "quiet",
    "n",
    "max_context_length",
)


def kobold_options(body: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for src, dst in MAPPING.items():
        value = body.get(src)
        if value is None:
            continue
        if src in INT_FIELDS and isinstance(value, float) and value.is_integer():
            value = int(value)
        if src == "sampler_seed" and isinstance(value, int) and value < 0:
            continue
        opts[dst] = value
    bias: dict[int, float] = {}
    if isinstance(body.get("logit_bias"), dict):
        for k, v in body["logit_bias"].items():
            try:
                bias[int(k)] = float(v)
            except (TypeError, ValueError):
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
