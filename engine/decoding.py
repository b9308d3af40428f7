"""Decoding strategies: generators that turn members' logits into committed tokens.

Each strategy is written as if it were alone: it yields a `Need` (see engine/generation.py) and
receives the logits it asked for. Drivers interleave many of them. Adding a strategy (speculative
drafts, steering gates) means adding a generator here or in its own module and naming it in
`STRATEGIES`; nothing else in the engine changes.
"""

from __future__ import annotations

from collections.abc import Callable

from nanocommander.engine.generation import Generation, Steps


def proxy(gen: Generation) -> Steps:
    """Plain proxy-tuning: every active member evaluates every token; fuse, sample, commit."""
    while True:
        logits = yield gen.need()
        token = gen.sampler.sample(gen.fuse(logits))
        if not gen.accept(token):
            return


STRATEGIES: dict[str, Callable[[Generation], Steps]] = {"proxy": proxy}
