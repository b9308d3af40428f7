"""Decoding strategies: generators that turn members' logits into committed tokens.

Each strategy is written as if it were alone: it yields a `Need` (see engine/decode/generation.py) and
receives the logits it asked for. Drivers interleave many of them. `strategy_for` picks one from
the request's Plan: the steering mode (engine/decode/steering.py) and, where its fusion is per position
and the sampler allows it, speculative drafting (engine/decode/speculative.py).

Speculation serves proxy and plausible; gated and nudge modes get their speed from lazy small
members instead (a gate decides one step at a time, which a batch of drafted positions cannot
wait for).
"""

from __future__ import annotations

from collections.abc import Callable

from nanocommander.engine.decode import speculative as spec
from nanocommander.engine.decode import steering
from nanocommander.engine.decode.generation import Generation, Steps
from nanocommander.errors import InvalidRequest


def proxy(gen: Generation) -> Steps:
    """Plain proxy-tuning: every active member evaluates every token; fuse, sample, commit."""
    return steering.proxy(gen)


STRATEGIES: dict[str, Callable[[Generation], Steps]] = {
    "proxy": proxy,
    "plausible": lambda gen: steering.proxy(gen, steering.fuser(gen)),
    "speculative": lambda gen: spec.speculative(gen, steering.fuser(gen)),
    "gated": steering.gated,
    "nudge": steering.nudge,
}


def strategy_name(gen: Generation) -> str:
    """Which strategy serves this Generation (the steering mode applies to the composite only)."""
    mode = gen.plan.steer.mode if gen.plan.steered else "proxy"
    if mode in ("gated", "nudge"):
        return mode
    if spec.usable(gen):
        return "speculative"
    return mode


def strategy_for(gen: Generation) -> Steps:
    name = strategy_name(gen)
    if gen.plan.steered and gen.plan.steer.mode != "proxy":
        gen.stats.steer_mode = gen.plan.steer.mode
    role = gen.logprobs.role if gen.logprobs is not None else "composite"
    if role != "composite" and name == "nudge":
        raise InvalidRequest("logprobs_member cannot be read in steer mode nudge (its steps run one member)")
    if role in steering.SMALL and name == "gated":  # every step must hold the small members' logits
        return steering.gated(gen, eager=True)
    return STRATEGIES[name](gen)
