"""What `calibrate` shows and writes: the table, its JSON, the prompting note and the `steer:` line.

Kept apart from the runs (tune/calibrate.py) because `tune --into` and `create --adapter` print
and write the same things after training, and because writing the recipe must touch the
`steer:` key alone: a user's comments and other keys are theirs.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nanocommander.engine.request.decode_options import RECOMMENDED, Steer
from nanocommander.tune.style_measure import StyleMeasure


def steer_yaml(steer: Steer) -> str:
    """`recommended`, or a flow mapping for the recipe: `{mode: nudge, reject: 3.2, word: true}`."""
    if steer == RECOMMENDED:
        return "recommended"
    items = []
    for k, v in steer.to_dict().items():
        items.append(f"{k}: {str(v).lower() if isinstance(v, bool) else v}")
    return "{" + ", ".join(items) + "}"


STEER_LINE = re.compile(r"^steer:.*(?:\n[ \t]+.*)*", re.MULTILINE)  # the key and its indented block


def write_steer(path: Path, steer: Steer) -> str:
    """Set the recipe's top-level `steer:` (replacing its line or appending one), nothing else."""
    text = path.read_text(encoding="utf-8")
    line = f"steer: {steer_yaml(steer)}"
    if STEER_LINE.search(text):
        new = STEER_LINE.sub(lambda _m: line, text, count=1)
    else:
        new = text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    tmp = path.with_name(f".{path.name}.tmp")  # a failure leaves the old recipe, never half of one
    try:
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return new


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.0%}"


def table(rows: Sequence[Any], chosen: Any | None, measure: StyleMeasure | None) -> str:
    """One line per setting: facts, kept vs large, styled (measure), of tuned, marker, seconds."""
    by = {r.label: r for r in rows}
    large, tuned = by.get("large"), by.get("tuned")
    head = f"{'setting':<46} {'facts':>6} {'kept':>6} {'styled':>7} {'of tuned':>8} {'marker':>7} {'secs':>6}"
    lines = [head]
    for r in rows:
        kept = r.accuracy / large.accuracy if large and large.accuracy else math.nan
        of = r.style / tuned.style if tuned and tuned.style else math.nan
        mark = _pct(r.marked / r.open) if r.open else "-"
        tag = "  <- chosen" if r is chosen else ("  (reference: not a steer: value)" if r.reference else "")
        lines.append(
            f"{r.label:<46} {_pct(r.accuracy):>6} {_pct(kept):>6} {_pct(r.style):>7} {_pct(of):>8} "
            f"{mark:>7} {r.seconds:>6.0f}{tag}"
        )
    if measure:
        lines.append(
            f"style threshold {measure.threshold:.3f} nats/token (tuned {measure.tuned_mean:.3f}, "
            f"base {measure.base_mean:.3f}, separates {measure.separation:.0%})"
        )
    return "\n".join(lines)


def prompt_note(rows: Sequence[Any], chosen: Any, keep: float = 0.95) -> str | None:
    """One line when the style-instruction baseline keeps the facts and styles at least as many
    replies as the chosen setting (a user should know when prompting alone would do); else None."""
    by = {r.label: r for r in rows}
    base = next((r for r in rows if r.reference), None)
    large = by.get("large")
    if base is None or large is None or not base.open or not base.styled:
        return None
    if base.accuracy < keep * large.accuracy - 1e-9 or base.style < chosen.style:
        return None
    verb = "beats" if base.style > chosen.style or base.accuracy > chosen.accuracy else "matches"
    return (
        f"prompting alone {verb} the chosen setting: {base.label} styles {base.style:.0%} of replies "
        f"with {base.accuracy:.0%} of facts right (chosen {chosen.label}: {chosen.style:.0%}, "
        f"{chosen.accuracy:.0%}); serving the large model with that system prompt may do"
    )


def summary(rows: Sequence[Any]) -> dict[str, Any]:
    """The --json form: per row its facts, style, marker counts, seconds and whether it is a reference."""
    return {
        r.label: {
            "accuracy": r.accuracy,
            "styled": r.style,
            "marked": r.marked,
            "open": r.open,
            "seconds": round(r.seconds, 1),
            "reference": r.reference,
            **({"steer": r.steer.to_dict()} if r.steer is not None else {}),
            **({"instruction": r.instruction} if r.instruction else {}),
        }
        for r in rows
    }


def report(rows: Sequence[Any], chosen: Any, measure: StyleMeasure, seconds: float) -> dict[str, Any]:
    """The whole --json document."""
    base = next((r for r in rows if r.reference), None)
    return {
        "rows": summary(rows),
        "chosen": chosen.label,
        "steer": chosen.steer.to_dict() if chosen.steer is not None else None,
        "baseline": base.label if base is not None else None,
        "prompt_note": prompt_note(rows, chosen),
        "measure": measure.to_dict(),
        "seconds": round(seconds, 1),
    }
