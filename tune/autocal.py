"""Calibrate right after an adapter is made (`tune --into`, `create --adapter`), never losing it.

A fresh adapter served with the fixed `steer: recommended` may keep none of its style (issue 22),
so both commands run `calibrate` by default and write the chosen `steer:` into the recipe. The
adapter and its recipe are already on disk when this runs: whatever goes wrong here (no large
model, a missing file, Ctrl-C) costs only the calibration, reported in one line that says how to
run it later. Output goes to stderr: stdout carries the commands' results alone.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanocommander.engine.request.decode_options import Steer


@dataclass
class Outcome:
    """What the calibration did: the chosen steer (None when skipped) and the line that says so."""

    steer: Steer | None
    line: str
    interrupted: bool = False


def held_out(cfg: Any) -> Path | None:
    """Write the tune run's eval split (the same seeded split train() held out) as chats with a user
    turn, into the run folder, for calibrate's --data; None when nothing was held out."""
    from nanocommander.tune import data as datamod
    from nanocommander.tune.train import split

    if not cfg.eval_split:
        return None
    dataset = datamod.load(cfg.data, fmt=cfg.format, skip_bad=True)
    _, held = split(dataset.examples, cfg.eval_split, cfg.seed)
    chats = [{"messages": list(e.messages)} for e in held if any(m.get("role") == "user" for m in e.messages)]
    if not chats:
        return None
    path = cfg.run_dir / "heldout.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")
    return path


def after_adapter(
    recipe: Any,
    *,
    data: Path | Callable[[], Path | None] | None = None,
    write: Callable[[Steer], str] | None = None,
    later: str = "nanocommander calibrate RECIPE --write",
    out=None,
) -> Outcome:
    """Run calibrate on `recipe` (a path, a Recipe or a callable giving one) with the current budget, print its table and
    how long it took, and hand the chosen steer to `write` (which returns where it went). `data`
    may be a callable, so that finding the held-out chats fails inside the one guard too.

    Any failure becomes one 'calibrate skipped: ...' line naming `later`, the command to run it again."""
    from nanocommander.tune import calibrate as cal

    out = out or sys.stderr
    budget = cal.BUDGET
    t0 = time.monotonic()
    print(
        f"calibrating the steering for this adapter ({budget.facts} questions, {budget.open} prompts, "
        f"<= {budget.num_predict} tokens each; --no-calibrate skips this)",
        file=out,
        flush=True,
    )
    try:
        rows, chosen, measure = cal.calibrate(
            recipe() if callable(recipe) else recipe,
            data=data() if callable(data) else data,
            n_facts=budget.facts,
            n_open=budget.open,
            num_predict=budget.num_predict,
            progress=lambda msg: print(
                f"calibrate: {msg} ({time.monotonic() - t0:.0f} s)", file=out, flush=True
            ),
        )
        print(cal.table(rows, chosen, measure), file=out)
        note = cal.prompt_note(rows, chosen)
        if note:
            print(note, file=out)
        refused = cal.no_setting_keeps_facts(rows, chosen)
        if refused:
            print(refused, file=out)
            return Outcome(None, refused)
        where = write(chosen.steer) if write is not None and chosen.steer is not None else None
    except KeyboardInterrupt:
        line = f"calibrate skipped: interrupted; the adapter and recipe are kept (run `{later}` later)"
        print(line, file=out)
        return Outcome(None, line, interrupted=True)
    except Exception as exc:  # noqa: BLE001 - the adapter is made: no failure here may cost it
        reason = " ".join(str(exc).split()) or type(exc).__name__
        line = f"calibrate skipped: {reason}; the adapter and recipe are kept (run `{later}` later)"
        print(line, file=out)
        return Outcome(None, line)
    line = f"calibrated in {time.monotonic() - t0:.0f} s; chose {chosen.label}" + (
        f"; wrote steer: into {where}" if where else ""
    )
    print(line, file=out)
    return Outcome(chosen.steer, line)
