"""CLI verbs `tune` and `eval`.

Importing this module must stay cheap and torch-free (the core install has no
torch): training modules are imported inside the handlers, and a missing extra
becomes an install hint instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from nanocommander.tune.autocal import after_adapter, held_out
from nanocommander.tune.calibrate import BUDGET
from nanocommander.tune.calibrate_report import write_steer
from nanocommander.tune.errors import MissingExtra, TrainingError
from nanocommander.tune.evaluate import evaluate, format_samples, parse_alphas, write_json
from nanocommander.tune.hfmodel import resolve_base
from nanocommander.tune.into import (
    build_recipe,
    family_base,
    family_recipe,
    register,
    register_member,
    write_recipe,
)
from nanocommander.tune.sweep import BUILTIN, sweep
from nanocommander.tune.train import TrainConfig, train

TRAIN_EXTRAS = ("torch", "transformers", "peft")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Long on purpose: it is the argparse declaration of `tune` and `eval`, one statement per flag."""
    p = sub.add_parser(
        "tune",
        help="LoRA fine-tune a small GGUF on chat data; writes a llama.cpp adapter",
        description="LoRA SFT of BASE on DATA (JSONL), exported as a llama.cpp LoRA GGUF. "
        "Needs: pip install 'nanocommander[tune]'.",
    )
    p.add_argument("--base", help="the small base GGUF (path or hf.co/user/repo:file.gguf)")
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="training JSONL (messages, conversations, instruction/output, prompt/completion or text)",
    )
    p.add_argument("--out", required=True, type=Path, help="adapter file to write (.gguf)")
    p.add_argument(
        "--format",
        choices=("messages", "sharegpt", "alpaca", "completion", "text"),
        help="force the data format instead of detecting it",
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4, help="constant learning rate (no warmup)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA alpha (scale = alpha/rank)")
    p.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(rank) (folded into the export)")
    p.add_argument(
        "--lora-a",
        choices=("q8_0", "f32"),
        default="q8_0",
        help="lora_a tensor type: q8_0 (default) keeps batched serving bit-identical to serving alone; "
        "f32 matches PEFT to float precision",
    )
    p.add_argument("--max-length", type=int, default=2048, help="truncate examples to this many tokens")
    p.add_argument(
        "--eval-split", type=float, default=0.1, help="fraction of examples held out for eval loss"
    )
    p.add_argument("--batch-size", type=int, default=2, help="micro-batch size")
    p.add_argument("--grad-accum", type=int, default=8, help="micro-batches per optimizer step")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--eval-every", type=int, help="optimizer steps between evals (default: 4 per epoch)")
    p.add_argument("--save-every", type=int, default=50, help="optimizer steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of this --out")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--skip-bad", action="store_true", help="drop malformed records instead of stopping")
    p.add_argument("--no-check", action="store_true", help="skip the llama.cpp vs PEFT self-check")
    p.add_argument(
        "--into", metavar="NAME", help="also write a composite recipe NAME.yaml next to the adapter"
    )
    p.add_argument("--large", type=Path, help="the large GGUF of the --into composite")
    p.add_argument("--recipe", type=Path, help="start --into from this recipe (keeps its large and settings)")
    p.add_argument("--alpha", type=float, help="composite alpha written into the recipe (default 1.0)")
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="with --into: keep steer: recommended instead of calibrating it for this adapter",
    )
    p.add_argument(
        "--from",
        dest="family",
        metavar="FAMILY",
        help="with --into: train on the base of this stored composite and register NAME in its family",
    )
    p.set_defaults(func=run_tune)

    e = sub.add_parser(
        "eval",
        help="compare large, tuned and composite on held-out conversations",
        description="Mean per-token NLL of the reference assistant answers under each model.",
    )
    e.add_argument("recipe", type=Path, help="composite recipe YAML")
    e.add_argument("--data", type=Path, help="held-out style JSONL (same formats as tune)")
    e.add_argument(
        "--general",
        nargs="?",
        const="builtin",
        help="short questions with reference answers (JSONL); no value: the 100 shipped with NanoCommander",
    )
    e.add_argument(
        "--sweep", action="store_true", help="also try steering modes x thresholds (one table row each)"
    )
    e.add_argument("--style-marker", help="also count general replies containing this text (a style's tell)")
    e.add_argument(
        "--style-measure",
        action="store_true",
        help="also count replies styled by the marker-free measure (tuned vs base log-likelihood ratio)",
    )
    e.add_argument(
        "--prompt-baseline",
        nargs="?",
        const="recipe",
        metavar="INSTRUCTION",
        help='also a row of the large model alone with this system prompt, e.g. "Talk like a pirate" '
        "(no value, or `recipe`: the recipe's system: prompt); does the composite beat prompting?",
    )
    e.add_argument("--format", choices=("messages", "sharegpt", "alpaca", "completion", "text"))
    e.add_argument(
        "--alpha", help="composite alpha(s), comma-separated, e.g. 0.5,1.0 (default: the recipe's)"
    )
    e.add_argument("--samples", type=int, default=0, help="also show N greedy replies side by side")
    e.add_argument("--num-predict", type=int, default=64, help="max tokens per sample reply")
    e.add_argument("--limit", type=int, help="score only the first N examples")
    e.add_argument("--max-length", type=int, default=1024)
    e.add_argument("--json", type=Path, help="write the report as JSON here")
    e.set_defaults(func=run_eval)

    c = sub.add_parser(
        "calibrate",
        help="pick the steering setting that keeps this recipe's adapter's style and the large model's facts",
        description="Runs the members, proxy, the recommended rule and adapter-relative variants on a few "
        "questions and open prompts; chooses the most styled setting with >= 95 % of the large model's accuracy.",
    )
    c.add_argument("recipe", type=Path, help="composite recipe YAML (tuned member: an adapter)")
    c.add_argument("--data", type=Path, help="held-out style chats: their user turns are the open prompts")
    c.add_argument("--general", type=Path, help="short questions with answers (default: the shipped ones)")
    c.add_argument(
        "--facts", type=int, default=BUDGET.facts, help=f"questions to ask (default {BUDGET.facts})"
    )
    c.add_argument(
        "--open", type=int, default=BUDGET.open, help=f"open prompts to ask (default {BUDGET.open})"
    )
    c.add_argument(
        "--num-predict",
        type=int,
        default=BUDGET.num_predict,
        help=f"max tokens per reply (default {BUDGET.num_predict}); the defaults fit 10 minutes on a "
        "2-core CPU for a 1.5B/0.5B Q4_K_M pair",
    )
    c.add_argument(
        "--prompt-baseline",
        metavar="TEXT",
        help="style instruction for the reference row 'large + style instruction' (default: the recipe's system:)",
    )
    c.add_argument("--style-marker", help="also count replies containing this text")
    c.add_argument("--write", action="store_true", help="write the chosen steer: into the recipe")
    c.add_argument("--json", type=Path, help="write the table as JSON here")
    c.set_defaults(func=run_calibrate)


def _require_extras() -> None:
    for name in TRAIN_EXTRAS:
        if importlib.util.find_spec(name) is None:
            raise MissingExtra(name)


def run_tune(args: argparse.Namespace) -> int:
    """Long on purpose: one linear path from flags to a trained adapter (checks, family shortcut, config,
    train, register); splitting it would scatter the flag checks.
    """
    _require_extras()

    if args.family:
        if not args.into or args.base or args.large or args.recipe:
            raise TrainingError("--from FAMILY goes with --into NAME and brings its own base and large")
        base = family_base(args.family)  # before training: an unknown family fails fast
    elif not args.base:
        raise TrainingError("--base BASE.gguf is required (or --from FAMILY with --into NAME)")
    elif args.into and not (args.large or args.recipe):
        raise TrainingError("--into NAME needs --large LARGE.gguf, --recipe EXISTING.yaml or --from FAMILY")
    else:
        base = resolve_base(args.base)
    cfg = TrainConfig(
        base=base,
        data=args.data,
        out=args.out,
        format=args.format,
        epochs=args.epochs,
        lr=args.lr,
        rank=args.rank,
        alpha=args.lora_alpha,
        rslora=args.rslora,
        lora_a=args.lora_a,
        max_length=args.max_length,
        eval_split=args.eval_split,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_steps=args.max_steps,
        eval_every=args.eval_every,
        save_every=args.save_every,
        seed=args.seed,
        resume=args.resume,
        device=args.device,
        skip_bad=args.skip_bad,
        check=not args.no_check,
    )
    result = train(cfg)
    print(
        f"loss {_fmt(result.first_loss)} -> {_fmt(result.last_loss)}; eval loss {_fmt(result.eval_before)} -> "
        f"{_fmt(result.eval_after)} over {result.steps} steps",
        file=sys.stderr,
    )
    print(f"metrics: {result.metrics}\nplot: {result.plot}", file=sys.stderr)
    path = None
    if args.family:
        path = write_recipe(
            family_recipe(args.into, args.family, result.adapter, args.alpha), result.adapter.parent
        )
        note = register_member(args.into, args.family, result.adapter, args.alpha)
        print(f"recipe: {path}; {note}", file=sys.stderr)
    elif args.into or args.recipe:
        recipe = build_recipe(
            adapter=result.adapter,
            base=base,
            name=args.into,
            large=args.large,
            existing=args.recipe,
            alpha=args.alpha,
        )
        path = write_recipe(recipe, result.adapter.parent)
        print(f"recipe: {path}; {register(path, recipe.name)}", file=sys.stderr)
    interrupted = result.interrupted
    if path is not None and not args.no_calibrate:
        interrupted |= _calibrate_tuned(args, cfg, path, interrupted)
    print(result.adapter)
    return 130 if interrupted else 0


def _calibrate_tuned(args: argparse.Namespace, cfg: TrainConfig, path: Path, interrupted: bool) -> bool:
    """Calibrate the fresh recipe on the run's held-out chats and write its steer: (and, with
    --from, the stored member's); True when Ctrl-C stopped it."""
    later = f"nanocommander calibrate {path} --write"
    if interrupted:
        print(f"calibrate skipped: training was interrupted (run `{later}` once it is done)", file=sys.stderr)
        return False

    def write(steer) -> str:
        write_steer(path, steer)
        if args.family:
            register_member(args.into, args.family, cfg.out, args.alpha, steer=steer)
            return f"{path} and the stored {args.into}"
        return str(path)

    return after_adapter(path, data=lambda: held_out(cfg), write=write, later=later).interrupted


def run_eval(args: argparse.Namespace) -> int:

    if args.general or args.sweep or args.prompt_baseline is not None:
        return _run_sweep(args)
    if args.data is None:
        raise TrainingError("eval needs --data STYLE.jsonl, --general [FILE] or both")
    report = evaluate(
        args.recipe,
        args.data,
        alphas=parse_alphas(args.alpha),
        fmt=args.format,
        max_length=args.max_length,
        limit=args.limit,
        samples=args.samples,
        num_predict=args.num_predict,
    )
    print(report.table())
    if report.samples:
        print(format_samples(report.samples))
    if args.json:
        print(f"report: {write_json(report, args.json)}", file=sys.stderr)
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    if args.data is None and not args.general:
        raise TrainingError("eval needs --data STYLE.jsonl, --general [FILE] or both")
    general = BUILTIN if args.general == "builtin" else args.general
    alphas = parse_alphas(args.alpha) if args.alpha else ([0.5, 1.0, 1.5] if args.sweep else [None])
    report = sweep(
        args.recipe,
        data=args.data,
        general=general,
        alphas=alphas,
        run_grid=args.sweep,
        fmt=args.format,
        max_length=args.max_length,
        limit=args.limit,
        num_predict=args.num_predict,
        marker=args.style_marker,
        measure=args.style_measure,
        prompt_baseline=args.prompt_baseline,
    )
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"report: {args.json}", file=sys.stderr)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    """Bad inputs end in one TrainingError/DataError line (main prints it), never a traceback."""
    import time

    from nanocommander.tune.calibrate import calibrate, no_setting_keeps_facts, prompt_note, table
    from nanocommander.tune.calibrate_report import report

    for flag, value in (("--data", args.data), ("--general", args.general)):
        if value is not None and not value.is_file():
            raise TrainingError(f"{flag} {value}: no such file")
    if min(args.facts, args.open, args.num_predict) < 1:
        raise TrainingError("--facts, --open and --num-predict must be >= 1")
    marker = (lambda reply: args.style_marker.lower() in reply.lower()) if args.style_marker else None
    t0 = time.monotonic()
    rows, chosen, measure = calibrate(
        args.recipe,
        data=args.data,
        general=args.general,
        n_facts=args.facts,
        n_open=args.open,
        num_predict=args.num_predict,
        marker=marker,
        prompt_baseline=getattr(args, "prompt_baseline", None),
        progress=lambda msg: print(
            f"calibrate: {msg} ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True
        ),
    )
    seconds = time.monotonic() - t0
    print(table(rows, chosen, measure))
    note = prompt_note(rows, chosen)
    if note:
        print(note)
    print(f"calibrated in {seconds:.0f} s; chosen: {chosen.label}", file=sys.stderr)
    refused = no_setting_keeps_facts(rows, chosen)
    if refused:
        print(refused, file=sys.stderr)
    if args.write and chosen.steer is not None and not refused:
        write_steer(args.recipe, chosen.steer)
        print(f"wrote steer into {args.recipe}", file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps(report(rows, chosen, measure, seconds), indent=2) + "\n", encoding="utf-8"
        )
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
