"""Sampling options: one schema, one default per field, one ordered merge.

Defaults follow Ollama's (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1,
repeat_last_n 64). Layers merge in order: built-in defaults, then the recipe's
`parameters`, then the request's options. "Unset" stays absent until the merge.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nanocommander.engine.request.decode_options import parse_speculative, parse_steer
from nanocommander.errors import InvalidRequest


@dataclass(frozen=True)
class SamplingOptions:
    """Everything that shapes the choice of the next token; none of it needs a reload."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF, e.g. from JSON mode or a JSON schema


# A field's annotation -> the Python types a wire value may have (ints are accepted for floats).
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "float": (float, int),
    "int": (int,),
    "int | None": (int,),
    "tuple[str, ...]": (list, tuple),
    "Mapping[int, float]": (dict,),
}

# Sampling option name -> accepted types, from SamplingOptions' own fields (grammar is set by the
# protocols' JSON mode, not sent as an option).
SAMPLING_KEYS: dict[str, tuple[type, ...]] = {
    f.name: _ACCEPTS[str(f.type)] for f in dataclasses.fields(SamplingOptions) if f.name != "grammar"
}

# Per-request controls that are not sampler settings.
CONTROL_KEYS: dict[str, tuple[type, ...]] = {
    "num_predict": (int,),
    "stop": (list, tuple, str),
    "alpha": (float, int),
    "member": (str,),
    "steer": (str, dict),  # a steering mode name or {mode, ...}: engine/request/decode_options.py
    "speculative": (bool, str, dict),  # false, a draft name or {draft, max}
    "provenance": (bool,),  # each token's source and probabilities (engine/decode/provenance.py)
}


DETERMINISTIC_ENV = "NANOCOMMANDER_DETERMINISTIC"


def deterministic_env() -> bool:
    """NANOCOMMANDER_DETERMINISTIC=1 turns the reproducible mode on where a recipe does not say."""
    return os.environ.get(DETERMINISTIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class LoadOptions:
    """Settings fixed when a model loads (a change means a reload, so requests may not send them).

    The one home of their defaults: the composite, an adapter family, the embedder and the memory
    estimate all read them through `from_parameters`.
    """

    num_ctx: int = 4096  # tokens per slot per member context, capped at the model's training context
    num_batch: int = 512  # tokens per llama_decode call while reading a prompt
    num_thread: int | None = None  # None: llama.cpp's default for this machine
    num_gpu: int | None = None  # layers on the GPU; members' gpu_layers take precedence
    num_parallel: int = 4  # sequences (slots) per member context, as Ollama's OLLAMA_NUM_PARALLEL
    deterministic: bool | None = None  # the reproducible mode (engine/llama/determinism.py); None: env

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any], num_parallel: int | None = None) -> LoadOptions:
        """A recipe's `parameters`; `num_parallel` is the server's setting, used where the recipe
        sets none (NANOCOMMANDER_NUM_PARALLEL)."""
        given = {f.name: parameters.get(f.name) for f in dataclasses.fields(cls)}
        given["num_parallel"] = given["num_parallel"] or num_parallel
        # 0 or null for a size means "the default" (clients send every field); num_gpu 0 means CPU
        sizes = ("num_ctx", "num_batch", "num_parallel", "num_thread")
        load = cls(**{k: v for k, v in given.items() if v is not None and (v or k not in sizes)})
        deterministic = deterministic_env() if load.deterministic is None else bool(load.deterministic)
        return dataclasses.replace(
            load, num_parallel=max(1, int(load.num_parallel)), deterministic=deterministic
        )


LOAD_KEYS: dict[str, tuple[type, ...]] = {
    f.name: (bool,) if f.name == "deterministic" else (int,) for f in dataclasses.fields(LoadOptions)
}

# Options Ollama retired or llama.cpp lacks; accepted and ignored so old clients keep working.
IGNORED_KEYS = frozenset(
    {
        "tfs_z",
        "penalize_newline",
        "use_mlock",
        "use_mmap",
        "numa",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "main_gpu",
        "num_keep",
        "num_gqa",
        "rope_frequency_base",
        "rope_frequency_scale",
    }
)

ALL_KEYS = {**SAMPLING_KEYS, **CONTROL_KEYS, **LOAD_KEYS}

# Numeric bounds, inclusive. Beyond them the engine cannot compute: logits are float32 and
# sampler arguments are C int32/float. alpha scales the tuned-minus-base delta; |alpha| > 100
# only overflows or drowns the large model, so it is refused rather than silently garbled.
ALPHA_LIMIT = 100.0
FLOAT_LIMIT = 1e6
INT32 = (-(2**31), 2**31 - 1)
RANGES: dict[str, tuple[float, float]] = {
    "alpha": (-ALPHA_LIMIT, ALPHA_LIMIT),
    "seed": (-(2**63), 2**64 - 1),  # reduced modulo 2**32; negative means random
}

MEMBERS = ("composite", "large", "base", "tuned")


def check_value(key: str, value: Any) -> Any:
    """Type-check one option value; returns it normalised (floats as float, stop as tuple)."""
    if key == "steer":
        return parse_steer(value)
    if key == "speculative":
        return parse_speculative(value)
    types = ALL_KEYS[key]
    if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
        names = "number" if float in types else " or ".join(sorted({t.__name__ for t in types}))
        raise InvalidRequest(f'option "{key}" must be of type {names}')
    if float in types:
        value = float(value)
    if isinstance(value, (int, float)):
        bounded(key, value)
    if key == "stop":
        items = [value] if isinstance(value, str) else list(value)
        if not all(isinstance(s, str) for s in items):
            raise InvalidRequest('option "stop" must be a string or a list of strings')
        return tuple(s for s in items if s)
    if key == "dry_sequence_breakers":
        return tuple(str(s) for s in value)
    if key == "logit_bias":
        try:
            bias = {int(k): float(v) for k, v in value.items()}
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidRequest('option "logit_bias" must map token ids to numbers') from exc
        if not all(b == -math.inf or abs(b) <= FLOAT_LIMIT for b in bias.values()):
            raise InvalidRequest(
                f'option "logit_bias" values must be within +-{FLOAT_LIMIT:g} (or -inf to ban a token)'
            )
        return bias
    if key == "num_parallel" and value < 1:
        raise InvalidRequest(f'option "{key}" must be at least 1')
    if key == "member" and value not in MEMBERS:
        raise InvalidRequest(f'option "member" must be one of {", ".join(MEMBERS)}')
    return value


def bounded(key: str, value: float) -> None:
    """Refuse NaN, infinities and numbers outside the key's range (RANGES, else int32 or +-FLOAT_LIMIT)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f'option "{key}" must be a finite number')
    lo, hi = RANGES.get(key) or ((-FLOAT_LIMIT, FLOAT_LIMIT) if isinstance(value, float) else INT32)
    if not lo <= value <= hi:
        raise InvalidRequest(f'option "{key}" must be between {_num(lo)} and {_num(hi)}')


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def clean_options(options: Mapping[str, Any] | None, *, unknown: str = "ignore") -> dict[str, Any]:
    """Validate a mapping of options; unknown keys are ignored (Ollama's habit) or raise.

    Null values are treated as unset, as clients often send every field.
    """
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is None or key in IGNORED_KEYS:
            continue
        if key not in ALL_KEYS:
            if unknown == "raise":
                raise InvalidRequest(f'unknown option "{key}"')
            continue
        out[key] = check_value(key, value)
    return out


def merge_sampling(*layers: Mapping[str, Any]) -> SamplingOptions:
    """Merge option layers (later wins) into a SamplingOptions; non-sampling keys are skipped."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if k in SAMPLING_KEYS or k == "grammar"})
    return dataclasses.replace(SamplingOptions(), **merged)
