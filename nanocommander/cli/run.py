"""`nanocommander run`: stream a composite's answer, chat interactively, or compare members.

Contract (scripts depend on it): stdout carries only generated text; load progress,
stats and errors go to stderr; failures exit non-zero.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanocommander.engine.llama import log as llamalog
from nanocommander.engine.request.options import clean_options, merge_sampling
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import Chunk, GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.registry import resolve


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a composite on a prompt, or chat with it")
    p.add_argument("recipe", help="a recipe YAML file or a model name in the store")
    p.add_argument("prompt", nargs="?", help="the prompt; omit for an interactive chat")
    p.add_argument("--alpha", type=float, help="weight of the tuned-minus-base delta (default: the recipe's)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-predict", type=int, dest="num_predict")
    p.add_argument("--raw", action="store_true", help="use the prompt as is, without the chat template")
    p.add_argument(
        "--compare", action="store_true", help="print large alone, tuned alone, then the composite"
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="print load time, token counts, speeds and llama.cpp's log to stderr",
    )
    p.set_defaults(func=run)


def load_recipe(ref: str) -> Recipe:
    """A recipe from a YAML path, or a model name resolved through the store."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return Recipe.load(path)

    return resolve(ref)


def run(args: argparse.Namespace) -> int:

    if args.verbose:  # llama.cpp's own log lines too
        llamalog.install(True)
    recipe = load_recipe(args.recipe)
    print(f"loading {recipe.name}...", file=sys.stderr, flush=True)
    comp = Composite.load(recipe, n_parallel=1)  # one user at the terminal: one slot of KV cache
    try:
        if args.verbose:
            print(f"load time: {comp.load_s:.2f}s", file=sys.stderr)
        if args.prompt is None:
            return _chat(comp, args)
        if args.compare:
            for label, member in (
                ("large alone", "large"),
                ("tuned alone", "tuned"),
                ("composite", "composite"),
            ):
                print(f"--- {label} ---", file=sys.stderr, flush=True)
                _answer(comp, args, [{"role": "user", "content": args.prompt}], member)
            return 0
        _answer(comp, args, [{"role": "user", "content": args.prompt}], "composite")
        return 0
    finally:
        comp.close()


def _request(comp, args, messages, member: str) -> GenerateRequest:
    options = {
        **comp.recipe.parameters,
        **clean_options(
            {"temperature": args.temperature, "seed": args.seed, "num_predict": args.num_predict}
        ),
    }
    num_predict = options.get("num_predict", -1)
    if args.raw:
        prompt = messages[-1]["content"]
    else:
        prompt = comp.chat_prompt(messages, num_predict=max(num_predict, 0))
    return GenerateRequest(
        prompt=prompt,
        sampling=merge_sampling(options),
        num_predict=num_predict,
        stop=tuple(options.get("stop", ())),
        alpha=args.alpha,
        member=member,
    )  # type: ignore[arg-type]


def _answer(comp, args, messages, member: str) -> str:
    text, last = [], None
    for chunk in comp.generate(_request(comp, args, messages, member)):
        if chunk.text:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            text.append(chunk.text)
        last = chunk
    sys.stdout.write("\n")
    sys.stdout.flush()
    if args.verbose and last is not None:
        _print_stats(last)
    return "".join(text)


def _print_stats(chunk: Chunk) -> None:
    s = chunk.stats
    if s is None:
        return
    pe_rate = s.prompt_eval_tokens / s.prompt_eval_s if s.prompt_eval_s else 0.0
    print(
        f"prompt tokens: {s.prompt_tokens} ({s.prompt_eval_tokens} evaluated)\n"
        f"prompt eval: {s.prompt_eval_s * 1000:.1f} ms ({pe_rate:.1f} tokens/s)\n"
        f"eval: {s.eval_count} tokens in {s.eval_s * 1000:.1f} ms ({s.tokens_per_s:.1f} tokens/s)\n"
        f"done reason: {chunk.done_reason.value if chunk.done_reason else '?'}",
        file=sys.stderr,
    )
    if s.speculative:
        mean = s.accepted / s.rounds if s.rounds else 0.0
        print(
            f"drafts ({s.speculative}): {s.accepted}/{s.drafted} accepted ({s.acceptance:.0%}), "
            f"{mean:.2f} per round",
            file=sys.stderr,
        )
    if s.steer_mode:
        print(
            f"steering ({s.steer_mode}): {s.steered}/{s.eval_count} tokens steered ({s.steered_fraction:.0%})",
            file=sys.stderr,
        )


def _chat(comp, args) -> int:
    history: list[dict[str, str]] = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print(">>> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/bye", "/exit"):
            return 0
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        reply = _answer(comp, args, history, "composite")
        history.append({"role": "assistant", "content": reply})
