"""The one step every protocol takes from a parsed body to the engine's GenerateRequest.

1. Options merge first, in one order: engine defaults, the recipe's `parameters`, the request's own
   (so a recipe's `num_predict` sizes the turn dropping as much as a request's does).
2. The prompt is rendered and tokenized off the event loop: a long chat through a Jinja template
   and the tokenizer is milliseconds to seconds of CPU that would stall every other connection.
3. Chats drop their oldest turns after the system prompt until prompt + num_predict fit num_ctx
   (engine/text/chat_template.py `fit_turns`: incremental, not one render per dropped turn);
   Kobold bodies instead cut the oldest text, through the `fit` hook their protocol passes.

Protocol modules only map their own field names onto Ollama-style option names first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nanocommander.engine.request.options import clean_options, merge_sampling
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.text.grammar import json_grammar
from nanocommander.errors import InvalidRequest

if TYPE_CHECKING:  # the translators import this module; the engine's runtime is only a type here
    from nanocommander.engine.runtime.composite import Composite

# ids, merged options -> ids; may rewrite options["num_predict"] (Kobold's clamp)
Fit = Callable[[list[int], dict[str, Any]], list[int]]


@dataclass(frozen=True)
class Chat:
    """A conversation to render with the composite's (or an inline) chat template."""

    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[Any] | None = None
    system: str | None = None
    template: str | None = None
    context: Sequence[int] = field(default=())  # Ollama /api/generate `context`: ids that come first


def grammar_for_format(fmt: Any) -> str | None:
    """Ollama `format`: "json" or a JSON schema object; "" or None means free text."""
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return json_grammar(None)
    if isinstance(fmt, dict):
        return json_grammar(fmt)
    raise InvalidRequest('format must be "json" or a JSON schema object')


def merge_options(
    recipe: Recipe, options: Mapping[str, Any] | None, grammar: str | None = None
) -> dict[str, Any]:
    """The recipe's parameters under the request's (validated) options: the one merge."""
    opts = {**recipe.parameters, **clean_options(dict(options) if options else None)}
    if grammar:
        opts["grammar"] = grammar
    return opts


def request_from(
    opts: Mapping[str, Any],
    prompt: str | list[int],
    *,
    add_bos: bool = True,
    ignore_eos: bool = False,
    trim_stop: bool = True,
) -> GenerateRequest:
    """The engine's request from merged options (see `merge_options`)."""
    return GenerateRequest(
        prompt=prompt,
        sampling=merge_sampling(dict(opts)),
        num_predict=int(opts.get("num_predict", -1)),
        stop=tuple(opts.get("stop", ())),
        alpha=opts.get("alpha"),
        member=opts.get("member", "composite"),
        steer=opts.get("steer"),
        speculative=opts.get("speculative"),
        provenance=bool(opts.get("provenance", False)),
        add_bos=add_bos,
        ignore_eos=ignore_eos,
        trim_stop=trim_stop,
    )


def make_request(
    recipe: Recipe,
    prompt: str | list[int],
    options: Mapping[str, Any] | None,
    *,
    grammar: str | None = None,
    add_bos: bool = True,
    ignore_eos: bool = False,
    trim_stop: bool = True,
) -> GenerateRequest:
    """Merge and build in one call, for a prompt that needs no rendering or fitting."""
    opts = merge_options(recipe, options, grammar)
    return request_from(opts, prompt, add_bos=add_bos, ignore_eos=ignore_eos, trim_stop=trim_stop)


def tokens(comp: Composite, prompt: Chat | str | list[int], opts: Mapping[str, Any]) -> list[int]:
    """The prompt's ids (blocking: run it off the event loop); a chat drops turns to fit."""
    if isinstance(prompt, Chat):
        text, ids = comp.chat_tokens(
            list(prompt.messages),
            tools=list(prompt.tools) if prompt.tools else None,
            system=prompt.system,
            template=prompt.template,
            num_predict=max(int(opts.get("num_predict", 0)), 0),
        )
        if prompt.context:  # a continuation: the earlier ids, then this turn without a second BOS
            return list(prompt.context) + comp.tokenize(text, add_bos=False)
        return ids
    if isinstance(prompt, str):
        return comp.tokenize(prompt)
    return list(prompt)


async def prepare(
    comp: Composite,
    prompt: Chat | str | list[int],
    options: Mapping[str, Any] | None,
    *,
    grammar: str | None = None,
    fit: Fit | None = None,
    ignore_eos: bool = False,
    trim_stop: bool = True,
) -> GenerateRequest:
    """Merge options, render and tokenize off the event loop, fit the context: the request to run."""
    opts = merge_options(comp.recipe, options, grammar)

    def work() -> list[int]:
        ids = tokens(comp, prompt, opts)
        return fit(ids, opts) if fit is not None else ids

    ids = await asyncio.get_running_loop().run_in_executor(None, work)
    return request_from(opts, ids, ignore_eos=ignore_eos, trim_stop=trim_stop)
