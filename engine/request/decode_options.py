"""How a composite decodes: the steering mode and speculative drafting, as recipe and request give them.

One schema for both places (recipe keys `steer:` / `speculative:`, request fields `steer` /
`speculative` in every protocol), validated here once. The engine's strategies read the
resulting frozen dataclasses; nothing here touches a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nanocommander.errors import InvalidRequest

STEER_MODES = ("proxy", "gated", "plausible", "nudge")
DRAFTS = ("tuned", "lookup", "off")
MAX_DRAFT = 32


@dataclass(frozen=True)
class Steer:
    """Where the tuned-minus-base delta is applied (see README, "Steering modes").

    gated: the delta is added only at steps the gate opens. The gate's first test, decided without
    the small models, opens when any set condition holds (`top1`: large's top-1 probability below
    it; `entropy`: large's entropy in nats above it; `opening`: the first N tokens of the reply;
    `sentences`: the first token of each sentence or line; `closing`: where the large model's top
    token ends the reply; `follow`: the N tokens after a steered one, so a styled phrase is
    finished); with none set it always passes. Where it opens, `delta` then asks that tuning
    overturn the large model's choice: the fused top token differs from the large model's and the
    delta prefers it by at least that many nats (engine/decode/steering.py, `overrides`), and `reject`
    that the tuned model itself puts the large model's token at least that many nats below its
    own favourite (`rejects`); elsewhere the large model decides alone. `reject: auto` measures
    that threshold on the composite's own adapter at load, or at the first request asking for it.
    plausible: fused logits restricted to tokens the large model gives >= beta x its top probability.
    nudge: where the gate opens (the large-model test, then `reject`), the tuned model's own token
    (or `word`) is taken; the base model never runs. `plain` (beta): the large model also reads the
    reply without the sentences the tuned model wrote, and its steps take that plain reading's
    choice among the tokens its styled reading gives >= beta x its top probability (see
    engine/decode/plain_view.py); the large member then keeps a second sequence per slot.
    """

    mode: str = "proxy"
    top1: float | None = None
    entropy: float | None = None
    delta: float | None = None
    reject: float | str | None = None  # nats, or AUTO (resolved per adapter before decoding)
    opening: int = 0
    beta: float = 0.0
    word: bool = False
    sentences: bool = False
    closing: bool = False
    follow: int = 0
    plain: float | None = None

    @property
    def reads_plainly(self) -> bool:
        """Whether the large model reads the reply without the tuned model's sentences (engine/decode/plain_view.py)."""
        return self.mode == "nudge" and self.plain is not None

    @property
    def views(self) -> bool:
        """Whether the large model keeps both readings (plain > 0: a second sequence per slot); with
        plain 0 every token is plausible, so the plain reading alone decides and the styled one is unused."""
        return self.reads_plainly and bool(self.plain)

    @property
    def lazy(self) -> bool:
        """Whether the small members may skip steps (only gates decided by the large model can)."""
        return self.mode in ("gated", "nudge") and self.large_gated

    @property
    def large_gated(self) -> bool:
        """Whether the gate's first test can stay shut (some large-model or position test is set)."""
        return (
            self.top1 is not None
            or self.entropy is not None
            or self.opening > 0
            or self.sentences
            or self.closing
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        for f in dataclasses.fields(self)[1:]:
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value
        return out


AUTO = "auto"  # `reject: auto`: the threshold measured on the adapter (engine/runtime/autoreject.py)

# The project's recommended setting (README, "Choosing a steering setting"): the large model writes
# every token the tuned model can live with, and the tuned model writes (whole words) only where it
# rejects the large model's choice: a style decision, not a guess at a fact. How far below its own
# favourite the tuned model puts a token it rejects depends on the adapter (10-30 nats for an
# adapter trained hard on a strong style, 2-5 for a gentle one), so `reject: auto` measures it on
# the adapter (engine/runtime/autoreject.py) rather than fixing 6 nats, which left gentler adapters
# unsteered (issue 22). The tuned model is asked where a style shows (each sentence's start, the
# reply's end, right after its own words), so it sleeps through the rest; the base model never runs.
# With plain 0 the large model reads the reply without the tuned model's own sentences (its greeting,
# its sign-off), which otherwise lead it astray ("... Bakery! Two to the power of ten is 1000000000"),
# in its one sequence: no second reading (README, "Choosing a steering setting").
RECOMMENDED = Steer(mode="nudge", reject=AUTO, word=True, sentences=True, closing=True, follow=2, plain=0.0)
PRESETS = {"recommended": RECOMMENDED}

BOOL_PARAMS = ("word", "sentences", "closing")
_PARAMS: dict[str, tuple[str, ...]] = {
    "proxy": (),
    "gated": ("top1", "entropy", "delta", "reject", "opening", "sentences", "closing", "follow"),
    "plausible": ("beta",),
    "nudge": ("top1", "entropy", "reject", "opening", "sentences", "closing", "follow", "word", "plain"),
}


def parse_steer(value: Any, what: str = "steer") -> Steer:
    """A mode name ("gated", "recommended") or an object {mode, ...parameters}."""
    if isinstance(value, Steer):
        return value
    if isinstance(value, str):
        if value in PRESETS:
            return PRESETS[value]
        if value in STEER_MODES:
            return Steer(mode=value)
        raise InvalidRequest(f"{what} must be one of {', '.join((*STEER_MODES, *PRESETS))}, not {value!r}")
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{what} must be a mode name or an object with a mode")
    mode = value.get("mode", "proxy")
    if mode in PRESETS:
        base, mode = PRESETS[mode], PRESETS[mode].mode
    elif mode in STEER_MODES:
        base = Steer(mode=mode)
    else:
        raise InvalidRequest(
            f"{what}.mode must be one of {', '.join((*STEER_MODES, *PRESETS))}, not {mode!r}"
        )
    fields: dict[str, Any] = {}
    for key, raw in value.items():
        if key == "mode":
            continue
        if key not in _PARAMS[mode]:
            allowed = ", ".join(_PARAMS[mode]) or "no parameters"
            raise InvalidRequest(f'{what}.{key} is not a parameter of mode "{mode}" (it takes {allowed})')
        fields[key] = _param(key, raw, f"{what}.{key}")
    return dataclasses.replace(base, **fields)


def _param(key: str, raw: Any, what: str) -> Any:
    if key in BOOL_PARAMS:
        if not isinstance(raw, bool):
            raise InvalidRequest(f"{what} must be true or false")
        return raw
    if raw is None and key in ("top1", "entropy", "delta", "reject", "plain"):
        return None
    if key == "reject" and raw == AUTO:
        return AUTO
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise InvalidRequest(f"{what} must be a finite number" + (' or "auto"' if key == "reject" else ""))
    if key in ("opening", "follow"):
        if not isinstance(raw, int) or raw < 0:
            raise InvalidRequest(f"{what} must be a whole number >= 0")
        return raw
    if key == "beta" and not 0.0 <= raw <= 1.0:
        raise InvalidRequest(f"{what} must be between 0 and 1")
    if key == "plain" and not 0.0 <= raw <= 1.0:
        raise InvalidRequest(f"{what} must be between 0 and 1 (or null: off)")
    return float(raw)


@dataclass(frozen=True)
class Speculation:
    """Who drafts tokens for the large (and base) models to verify in one batch, and how many at most."""

    draft: str = "tuned"
    max: int = 8

    @property
    def on(self) -> bool:
        return self.draft != "off" and self.max > 0

    def to_dict(self) -> dict[str, Any]:
        return {"draft": self.draft, "max": self.max}


def large_sequences(steer: Steer | None) -> int:
    """Sequences per slot in the large member's context: a second one holds the plain reading."""
    return 2 if steer is not None and steer.views else 1


OFF = Speculation(draft="off")
DEFAULT_SPECULATION = Speculation()


def parse_speculative(value: Any, what: str = "speculative") -> Speculation:
    """false/true, a draft name ("tuned", "lookup", "off") or an object {draft, max}."""
    if isinstance(value, Speculation):
        return value
    if isinstance(value, bool):
        return DEFAULT_SPECULATION if value else OFF
    if isinstance(value, str):
        if value not in DRAFTS:
            raise InvalidRequest(f"{what} must be true, false or one of {', '.join(DRAFTS)}, not {value!r}")
        return Speculation(draft=value)
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{what} must be true, false, a draft name or an object {{draft, max}}")
    unknown = set(value) - {"draft", "max"}
    if unknown:
        raise InvalidRequest(f"{what}.{sorted(unknown)[0]} is unknown (use draft and max)")
    draft = value.get("draft", DEFAULT_SPECULATION.draft)
    if draft not in DRAFTS:
        raise InvalidRequest(f"{what}.draft must be one of {', '.join(DRAFTS)}, not {draft!r}")
    n = value.get("max", DEFAULT_SPECULATION.max)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_DRAFT:
        raise InvalidRequest(f"{what}.max must be a whole number from 0 to {MAX_DRAFT}")
    return Speculation(draft=draft, max=n)
