"""The server's record of running generations, keyed by KoboldCpp's `genkey`.

KoboldAI Lite polls a generation's text and aborts it by genkey, and SillyTavern's "KoboldCpp"
text-completion type sends the same genkey to OpenAI's `/v1/completions`; so both protocols start
their generations here, and `/api/extra/perf` reads the last one's figures from here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from nanocommander.backend.manager import Loaded, ModelManager
from nanocommander.engine.request.types import Chunk, DoneReason, GenerateRequest

KEEP = 64  # finished generations remembered for a late check; the oldest half goes past this


@dataclass
class Generation:
    genkey: str
    text: str = ""
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False


@dataclass
class Perf:
    last: dict[str, Any] = field(default_factory=dict)
    total_gens: int = 0
    started: float = field(default_factory=time.time)


@dataclass
class Generations:
    by_key: dict[str, Generation] = field(default_factory=dict)
    current: Generation | None = None
    perf: Perf = field(default_factory=Perf)

    def find(self, genkey: str | None) -> Generation | None:
        """The generation of that genkey, or the latest one when no key is given (KoboldCpp's rule)."""
        return self.by_key.get(genkey) if genkey else self.current

    def start(
        self, manager: ModelManager, loaded: Loaded, req: GenerateRequest, genkey: Any
    ) -> tuple[Generation, AsyncIterator[Chunk]]:
        """Register a generation (for check/abort by genkey, or as the current one) and return its stream."""
        gen = Generation(str(genkey or f"KCPP{uuid.uuid4().hex[:8]}"))
        self.by_key[gen.genkey] = gen
        self.current = gen
        if len(self.by_key) > KEEP:
            for key in [k for k, g in self.by_key.items() if g.done][: KEEP // 2]:
                del self.by_key[key]
        return gen, self._tracked(gen, manager.generate(loaded, req))

    async def _tracked(self, gen: Generation, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        try:
            async for chunk in chunks:
                gen.text += chunk.text
                yield chunk
                if chunk.done and chunk.stats:
                    s = chunk.stats
                    self.perf.total_gens += 1
                    self.perf.last = {
                        "last_process": s.prompt_eval_s,
                        "last_eval": s.eval_s,
                        "last_token_count": s.eval_count,
                        "last_input_count": s.prompt_tokens,
                        "stop_reason": 1 if chunk.done_reason == DoneReason.STOP else 0,
                    }
                if gen.abort.is_set():
                    break
        finally:
            gen.done = True
            await chunks.aclose()  # type: ignore[attr-defined]


GENERATIONS = web.AppKey("generations", Generations)
