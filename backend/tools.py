"""Glue shared by the Ollama and OpenAI chat routes: tool calls, log-probabilities, `n` samples.

`plan` decides, from the composite's chat template (or the recipe's `tool_parser`) and the
request's `tools`/`tool_choice`, which syntax to parse, which grammar forces a call and
which control tokens the engine must render; `split` runs the parser over a chunk stream.
Protocol-neutral: the wire shapes stay in ollama_api and openai_api.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from nanocommander.engine.decode.logprobs import MAX_TOP
from nanocommander.engine.request.types import Chunk, GenerateRequest
from nanocommander.engine.text.toolcalls import (
    BARE,
    Family,
    ToolCall,
    ToolCallParser,
    choice,
    family,
    grammar,
)
from nanocommander.errors import InvalidRequest

MAX_N = 16  # samples per OpenAI request


@dataclass(frozen=True)
class ToolPlan:
    family: Family | None = None  # None: no parsing (no tools, or tool_choice none)
    grammar: str | None = None  # forces a call (tool_choice required or a named function)
    names: frozenset[str] = frozenset()  # the offered tools: marker-less JSON must name one to be a call

    def apply(self, req: GenerateRequest) -> GenerateRequest:
        if self.family is None:
            return req
        sampling = req.sampling
        if self.grammar:
            sampling = dataclasses.replace(sampling, grammar=self.grammar)
        return dataclasses.replace(req, sampling=sampling, special_text=self.family.special_text)


def plan(
    template: str | None,
    tool_parser: str | None,
    tools: Sequence[dict[str, Any]] | None,
    tool_choice: Any = None,
    *,
    parallel: bool = True,
) -> ToolPlan:
    forced = choice(tool_choice, tools)
    if not tools or tool_choice == "none":
        return ToolPlan()
    names = frozenset(_names(tools))
    fam = family(template, tool_parser)
    if fam is None:
        if forced:
            raise InvalidRequest(
                "cannot tell this model's tool-call syntax from its chat template; "
                "set `tool_parser: hermes|llama3|mistral` in the recipe"
            )
        return ToolPlan(BARE, names=names)  # still catch replies that are only JSON calls
    return ToolPlan(fam, grammar(fam, tools, forced, parallel=parallel) if forced else None, names)


def _names(tools: Sequence[dict[str, Any]]) -> list[str]:
    fns = (t.get("function") if isinstance(t, dict) else None for t in tools)
    return [fn["name"] for fn in fns if isinstance(fn, dict) and isinstance(fn.get("name"), str)]


class Splitter:
    """One reply's tool-call parser: each chunk with its text reduced to content, and the calls it
    completed (an `n`-sample request keeps one per sample, their chunks interleaved)."""

    def __init__(self, plan: ToolPlan):
        self.parser = ToolCallParser(plan.family, plan.names) if plan.family is not None else None

    def feed(self, chunk: Chunk) -> tuple[Chunk, list[ToolCall]]:
        if self.parser is None:
            return chunk, []
        text, calls = self.parser.push(chunk.text)
        if chunk.done:
            tail, more = self.parser.finish()
            text, calls = text + tail, calls + more
        return dataclasses.replace(chunk, text=text), calls


async def split(chunks: AsyncIterator[Chunk], plan: ToolPlan) -> AsyncIterator[tuple[Chunk, list[ToolCall]]]:
    """Each chunk with its text reduced to content, and the tool calls completed with it."""
    splitter = Splitter(plan)
    async for chunk in chunks:
        yield splitter.feed(chunk)


def logprobs_request(
    req: GenerateRequest, want: Any, top: Any, member: Any = None, *, top_key: str = "top_logprobs"
) -> GenerateRequest:
    """Ask the engine for log-probabilities: `want` true (or an int count) and `top` alternatives."""
    if want is None or want is False:
        if top not in (None, 0):
            raise InvalidRequest(f'"{top_key}" needs "logprobs" to be set')
        return req
    k = want if isinstance(want, int) and not isinstance(want, bool) else top or 0
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_TOP:
        raise InvalidRequest(f'"{top_key}" must be an integer between 0 and {MAX_TOP}')
    if member is not None and member not in ("composite", "large", "base", "tuned"):
        raise InvalidRequest('"logprobs_member" must be one of composite, large, base, tuned')
    return dataclasses.replace(req, logprobs=k, logprobs_member=member or "composite")


def samples(req: GenerateRequest, n: Any) -> list[GenerateRequest]:
    """`n` independent requests: seeds seed+i when a seed is set, else each its own random seed."""
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise InvalidRequest(f'"n" must be an integer between 1 and {MAX_N}')
    seed = req.sampling.seed
    if n == 1:
        return [req]
    return [
        dataclasses.replace(
            req,
            sampling=dataclasses.replace(req.sampling, seed=None if seed is None or seed < 0 else seed + i),
        )
        for i in range(n)
    ]
