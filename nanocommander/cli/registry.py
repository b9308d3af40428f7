"""CLI verbs over the registry: pull, push, create, list/ls, show, rm, cp, verify.

Results go to stdout; progress bars (tqdm, drawn from the same events the server
streams for /api/pull) and errors go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nanocommander import units
from nanocommander.engine.llama import determinism
from nanocommander.engine.request.options import LoadOptions
from nanocommander.errors import InvalidRequest
from nanocommander.registry.api import Registry


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pull", help="fetch a recipe's members (RECIPE.yaml, hf.co/user/repo[:tag], or a stored name)"
    )
    p.add_argument("ref")
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser(
        "create",
        help="register a recipe under a name and fetch its members",
        description="Register a recipe (-f), or a new member of an adapter family: --from a stored "
        "composite or recipe, reusing its large and base, with --adapter as the tuned member.",
    )
    p.add_argument("name")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("-f", "--file", help="the recipe YAML")
    how.add_argument(
        "--from",
        dest="family",
        metavar="FAMILY",
        help="a stored composite or recipe to share large and base with",
    )
    p.add_argument("--adapter", type=Path, help="with --from: the LoRA adapter GGUF (trained on the base)")
    p.add_argument("--alpha", type=float, help="with --from: alpha of the new member (default: the family's)")
    p.add_argument("--adapter-scale", type=float, dest="adapter_scale", help="with --from: LoRA scale")
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="with --adapter: keep the family's steer: instead of calibrating it for this adapter",
    )
    p.set_defaults(func=cmd_create)
    p = sub.add_parser("push", help="publish a stored model to hf.co/user/repo[:tag]")
    p.add_argument("name")
    p.add_argument("target")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.set_defaults(func=cmd_push)
    for alias in ("list", "ls"):
        p = sub.add_parser(alias, help="list stored models")
        p.set_defaults(func=cmd_list)
    p = sub.add_parser("show", help="members, alpha, parameters, template and a memory estimate")
    p.add_argument("name")
    p.add_argument("--num-ctx", type=int, dest="num_ctx", help="context to size the KV cache for")
    p.add_argument("--recipe", action="store_true", help="print the stored recipe YAML only")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("rm", help="remove models (blobs other models use are kept)")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_rm)
    p = sub.add_parser("cp", help="copy a model to a new name")
    p.add_argument("source")
    p.add_argument("dest")
    p.set_defaults(func=cmd_cp)
    p = sub.add_parser("verify", help="re-hash every blob in the store")
    p.add_argument(
        "--fix", action="store_true", help="delete corrupt blobs so the next pull fetches them again"
    )
    p.set_defaults(func=cmd_verify)


def _registry():

    return Registry()


def render(events: Iterable[dict[str, Any]], out=None) -> None:
    """Draw Ollama-style progress events as tqdm bars (one per digest or file) and status lines."""

    out = out or sys.stderr  # looked up per call: tests (and callers) swap sys.stderr

    bars: dict[str, tqdm] = {}
    try:
        for event in events:
            status = event.get("status", "")
            if "total" in event:
                key = event.get("digest") or status
                bar = bars.get(key)
                if bar is None:
                    for done in bars.values():  # members arrive one at a time: one live bar
                        done.close()
                    bar = bars[key] = tqdm(
                        total=event["total"],
                        desc=status,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        file=out,
                        leave=True,
                    )
                bar.update(max(0, int(event.get("completed", 0)) - bar.n))
            else:
                for done in bars.values():
                    done.close()
                print(status, file=out, flush=True)
    finally:
        for bar in bars.values():
            bar.close()


def cmd_pull(args: argparse.Namespace) -> int:
    render(_registry().pull(args.ref))
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    reg = _registry()
    if args.family is None:
        if args.adapter is not None or args.alpha is not None or args.adapter_scale is not None:
            raise InvalidRequest(
                "--adapter, --alpha and --adapter-scale go with --from (set them in the recipe)"
            )
        render(reg.create(args.name, path=args.file))
        return 0
    if args.adapter is None:
        raise InvalidRequest("--from FAMILY needs --adapter FILE (the tuned member's LoRA)")
    render(
        reg.create_member(
            args.name, args.family, args.adapter, alpha=args.alpha, adapter_scale=args.adapter_scale
        )
    )
    if not args.no_calibrate and _calibrate_member(reg, args):
        return 130  # Ctrl-C during calibration: the member stays registered
    return 0


def _calibrate_member(reg: Registry, args: argparse.Namespace) -> bool:
    """Calibrate the member just stored (over its blobs) and store it again with the chosen steer:.
    The member stays registered whatever happens here (tune/autocal.py says why in one line);
    True when Ctrl-C stopped it."""
    from nanocommander.tune.autocal import after_adapter

    def write(steer) -> str:
        for _event in reg.create_member(
            args.name,
            args.family,
            args.adapter,
            alpha=args.alpha,
            adapter_scale=args.adapter_scale,
            steer=steer,
        ):
            pass
        return f"the stored {args.name}"

    later = f"nanocommander calibrate RECIPE --write, then create {args.name} -f RECIPE"
    return after_adapter(lambda: reg.resolve(args.name), write=write, later=later).interrupted


def cmd_push(args: argparse.Namespace) -> int:
    render(_registry().push(args.name, args.target, private=args.private))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    entries = _registry().list()
    shared = Counter(e.family for e in entries if e.family)
    rows = [
        (
            e.name.display(),
            e.digest[:12],
            units.size(e.size),
            f"{e.family} ({shared[e.family]})" if e.family else "-",
            e.modified_at.strftime("%Y-%m-%d %H:%M"),
        )
        for e in sorted(entries, key=lambda e: (e.family or "~", -e.modified_at.timestamp()))
    ]
    _table([("NAME", "ID", "SIZE", "FAMILY", "MODIFIED"), *rows])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    d = _registry().show(args.name, num_ctx=args.num_ctx)
    if args.recipe:
        sys.stdout.write(d.recipe_text)
        return 0
    print(f"  Model\n    name        {d.name.display()}\n    alpha       {d.recipe.alpha:g}")
    print("\n  Members")
    rows = [("role", "kind", "arch", "params", "quant", "size", "context", "from")]
    for m in d.members:
        i = m.info
        rows.append(
            (
                m.role,
                m.kind,
                i.architecture or "?",
                i.parameter_size,
                i.quantization or "?",
                units.size(i.size),
                str(i.context_length or "-"),
                m.origin,
            )
        )
    _table(rows, indent="    ")
    if d.recipe.parameters:
        print("\n  Parameters")
        for k, v in d.recipe.parameters.items():
            print(f"    {k:<16}{list(v) if isinstance(v, tuple) else v}")
    mode = determinism.describe(bool(LoadOptions.from_parameters(d.recipe.parameters).deterministic))
    print(
        f"\n  Reproducible\n    {'on (' + str(mode['how']) + '); costs: ' + str(mode['cost']) if mode['enabled'] else 'off: ' + str(mode['note'])}"
    )
    if d.system:
        print(f"\n  System\n    {d.system.strip()[:300]}")
    if d.template:
        first = d.template.strip().splitlines()[0] if d.template.strip() else ""
        print(f"\n  Template\n    {first[:100]}{' ...' if len(d.template.strip()) > len(first) else ''}")
    mem = d.memory
    print("\n  Memory estimate (weights + f16 KV cache of n_ctx tokens per slot)")
    rows = [("role", "weights", "kv cache", "n_ctx", "slots", "total")]
    for m in mem.members.values():
        kv = units.size(m.kv_cache)
        rows.append(
            (m.role, units.size(m.weights), kv, str(m.n_ctx), str(m.num_parallel), units.size(m.total))
        )
    rows.append(("all", "", "", "", "", units.size(mem.total)))
    _table(rows, indent="    ")
    if mem.free is not None and not mem.fits:
        print(
            f"warning: needs about {units.size(mem.total)} but only {units.size(mem.free)} of RAM is "
            "available",
            file=sys.stderr,
        )
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    reg = _registry()
    for ref in args.names:
        name, freed = reg.delete(ref)
        print(f"deleted '{name.display()}'" + (f" ({len(freed)} unused blobs removed)" if freed else ""))
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    dest = _registry().copy(args.source, args.dest)
    print(f"copied '{args.source}' to '{dest.display()}'")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    report = _registry().verify(fix=args.fix)
    for digest, why in report.corrupt:
        print(f"corrupt {digest}: {why}" + (" (removed)" if digest in report.removed else ""))
    for name in report.affected:
        print(f"model '{name}' needs `nanocommander pull {name}`")
    if report.partials:
        verb = "removed" if args.fix else "kept for resuming (--fix removes them)"
        print(f"{units.size(report.partials)} of unfinished downloads {verb}")
    if report.unreferenced:
        verb = "collected" if args.fix else "(--fix collects them)"
        print(f"{report.unreferenced} blobs no model uses {verb}")
    if report.stale:
        verb = "removed" if args.fix else "(--fix removes them)"
        print(f"{report.stale} temp files left by interrupted commands {verb}")
    print(f"checked {report.checked} blobs, {len(report.corrupt)} corrupt")
    return 1 if report.corrupt and not args.fix else 0


def _table(rows: list[tuple[str, ...]], indent: str = "") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
