"""`nanocommander calibrate RECIPE`: pick the steering setting for this recipe's own adapter.

Fixed thresholds (`reject: 6` nats) fit the adapters they were tuned on and lose the style on
others: an adapter whose tuned model never rejects the large model's word by 6 nats is never
asked. So the candidates here are expressed relative to the adapter's own statistics: the
margins by which the tuned model rejects the large model's favourite token on the tuned model's
own replies (`rejection_margins`); `reject` at a few quantiles of those margins. Every candidate
is run through the engine (Composite.generate: the behaviour a user gets) on a handful of short
factual questions and open prompts; the chosen one keeps the most replies styled (the marker-free
measure, tune/style_measure.py) subject to accuracy >= `keep` x the large model's.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nanocommander.engine.decode.steering import rejection_margins
from nanocommander.engine.llama.member import Hold
from nanocommander.engine.request.decode_options import RECOMMENDED, Steer
from nanocommander.tune.errors import DataError, TrainingError
from nanocommander.tune.style_measure import StyleMeasure, fit_threshold, text_ratio

OPEN_PROMPTS = [
    "Tell me about your favourite season.",
    "How should I start learning to program?",
    "Describe a good breakfast.",
    "What makes a good friend?",
    "Give me a tip for writing clean code.",
    "How do I stay calm before an exam?",
]
QUANTILES = (0.25, 0.5)  # of the adapter's rejection margins, as `reject` thresholds


@dataclass
class Row:
    """One setting's results: facts right, open replies styled (measure and, if given, marker)."""

    label: str
    member: str = "composite"
    steer: Steer | None = None
    correct: int = 0
    asked: int = 0
    styled: int = 0
    marked: int = 0
    open: int = 0
    ratios: list[float] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.asked if self.asked else math.nan

    @property
    def style(self) -> float:
        return self.styled / self.open if self.open else math.nan


def relative_settings(margins: Sequence[float], quantiles: Sequence[float] = QUANTILES) -> list[Steer]:
    """The recommended rule with `reject` at quantiles of this adapter's own rejection margins."""
    if not margins:
        return []
    cuts = sorted({round(float(np.quantile(margins, q)), 2) for q in quantiles})
    return [dataclasses.replace(RECOMMENDED, reject=max(c, 0.5)) for c in cuts]


def candidates(margins: Sequence[float]) -> list[Row]:
    """The members alone, proxy, the fixed recommended rule and the adapter-relative ones."""
    rows = [
        Row("large", "large"),
        Row("tuned", "tuned"),
        Row("base", "base"),
        Row("proxy a=1", steer=Steer()),
    ]
    rows.append(Row("recommended (reject auto)", steer=RECOMMENDED))
    rows.append(Row("recommended, fixed reject 6", steer=dataclasses.replace(RECOMMENDED, reject=6.0)))
    for s in relative_settings(margins):
        rows.append(Row(f"recommended reject {s.reject:g} (adapter-relative)", steer=s))
    rows.append(Row("gated reject 2", steer=Steer("gated", reject=2.0)))
    return rows


def choose(rows: Sequence[Row], keep: float = 0.95) -> Row:
    """The composite row with the most styled replies among those keeping >= `keep` x large's
    accuracy (ties: the higher accuracy, then the earlier row); with none, the most accurate."""
    by = {r.label: r for r in rows}
    if "large" not in by:
        raise TrainingError("calibration needs the large model's row to compare with")
    floor = keep * by["large"].accuracy
    pool = [r for r in rows if r.member == "composite"]
    if not pool:
        raise TrainingError("calibration has no composite setting to choose from")
    ok = [r for r in pool if r.asked and r.accuracy >= floor - 1e-9]
    if not ok:
        return max(pool, key=lambda r: (r.accuracy, -pool.index(r)))
    return max(ok, key=lambda r: (r.style, r.accuracy, -pool.index(r)))


def steer_yaml(steer: Steer) -> str:
    """A flow mapping for the recipe: `{mode: nudge, reject: 3.2, word: true}`."""
    items = []
    for k, v in steer.to_dict().items():
        items.append(f"{k}: {str(v).lower() if isinstance(v, bool) else v}")
    return "{" + ", ".join(items) + "}"


def write_steer(path: Path, steer: Steer) -> str:
    """Set the recipe's top-level `steer:` (replacing its line or appending one), nothing else."""
    text = path.read_text(encoding="utf-8")
    line = f"steer: {steer_yaml(steer)}"
    pattern = re.compile(r"^steer:.*(?:\n[ \t]+.*)*", re.MULTILINE)
    if pattern.search(text):
        new = pattern.sub(line, text, count=1)
    else:
        new = text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    path.write_text(new, encoding="utf-8")
    return new


def table(rows: Sequence[Row], chosen: Row | None, measure: StyleMeasure | None) -> str:
    by = {r.label: r for r in rows}
    large, tuned = by.get("large"), by.get("tuned")
    head = f"{'setting':<44} {'facts':>6} {'kept':>6} {'styled':>7} {'of tuned':>8} {'marker':>7}"
    lines = [head]
    for r in rows:
        kept = r.accuracy / large.accuracy if large and large.accuracy else math.nan
        of = r.style / tuned.style if tuned and tuned.style else math.nan
        mark = f"{r.marked / r.open:>7.0%}" if r.open else f"{'-':>7}"
        lines.append(
            f"{r.label:<44} {r.accuracy:>6.0%} {kept:>6.0%} {r.style:>7.0%} {of:>8.0%} {mark}"
            + ("  <- chosen" if r is chosen else "")
        )
    if measure:
        lines.append(
            f"style threshold {measure.threshold:.3f} nats/token (tuned {measure.tuned_mean:.3f}, "
            f"base {measure.base_mean:.3f}, separates {measure.separation:.0%})"
        )
    return "\n".join(lines)


def prompts_from(data: Path | None, limit: int) -> list[str]:
    """The user turns of held-out style chats (first user message of each), or the shipped prompts."""
    if data is None:
        return OPEN_PROMPTS[:limit]
    from nanocommander.tune import data as datamod

    examples = datamod.load(data).examples
    out = [m["content"] for e in examples for m in e.messages[:1] if m.get("role") == "user"]
    if not out:
        raise DataError(f"{data}: no user turns to use as calibration prompts")
    return out[:limit]


def run(
    comp,
    rows: list[Row],
    facts: Sequence[tuple[str, list[str]]],
    chat: Sequence[str],
    num_predict: int,
) -> None:
    """Generate every row's replies through the engine (facts right; each open reply's ratio)."""
    from nanocommander.tune.sweep import correct

    for r in rows:
        for question, answers in facts:
            q = comp.chat_prompt([{"role": "user", "content": question}], num_predict=num_predict)
            r.correct += correct(generate(comp, r, q, num_predict), answers)
            r.asked += 1
        for p in chat:
            reply = generate(comp, r, p, num_predict)
            r.replies.append(reply)
            r.ratios.append(text_ratio(comp, p, reply))


def score(rows: Sequence[Row], measure: StyleMeasure, marker=None) -> None:
    """Count styled replies by the measure and, when given, by `marker(reply) -> bool`."""
    for r in rows:
        r.open = len(r.ratios)
        r.styled = sum(measure.styled(x) for x in r.ratios)
        r.marked = sum(bool(marker(x)) for x in r.replies) if marker else 0


def calibrate(
    recipe_path: Path,
    *,
    data: Path | None = None,
    general: Path | None = None,
    n_facts: int = 10,
    n_open: int = 6,
    num_predict: int = 32,
    marker=None,
    keep: float = 0.95,
) -> tuple[list[Row], Row, StyleMeasure]:
    """Fit the style measure, derive the adapter-relative settings, run them all, choose one."""
    from nanocommander.engine.request.recipe import Recipe
    from nanocommander.engine.runtime.composite import Composite
    from nanocommander.errors import NanoCommanderError
    from nanocommander.tune.sweep import BUILTIN, load_general

    try:
        recipe = Recipe.load(recipe_path)
    except (NanoCommanderError, OSError, ValueError) as exc:
        raise TrainingError(f"{recipe_path}: {exc}") from None
    if not recipe.tuned.is_adapter:
        raise TrainingError(f"{recipe_path}: calibrate needs a recipe whose tuned member is an adapter")
    facts = load_general(general or BUILTIN)[:n_facts]
    prompts = prompts_from(data, n_open)
    comp = Composite.load(recipe)
    try:
        chat = [comp.chat_prompt([{"role": "user", "content": p}], num_predict=num_predict) for p in prompts]
        members = [Row("large", "large"), Row("tuned", "tuned"), Row("base", "base")]
        run(comp, members, facts, chat, num_predict)
        measure = fit_threshold(members[1].ratios, members[2].ratios)
        margins = [
            m for p, reply in zip(chat, members[1].replies, strict=True) for m in margins_of(comp, p, reply)
        ]
        steered = candidates(margins)[3:]
        run(comp, steered, facts, chat, num_predict)
    finally:
        comp.close()
    rows = members + steered
    score(rows, measure, marker)
    return rows, choose(rows, keep), measure


def generate(comp, row: Row, prompt: str, num_predict: int) -> str:
    from nanocommander.engine.request.options import merge_sampling
    from nanocommander.engine.request.types import GenerateRequest

    greedy = merge_sampling({"temperature": 0, "repeat_penalty": 1.0})
    req = GenerateRequest(
        prompt=prompt, sampling=greedy, num_predict=num_predict, member=row.member, steer=row.steer
    )  # type: ignore[arg-type]
    return "".join(c.text for c in comp.generate(req))


def margins_of(comp, prompt: str, reply: str) -> list[float]:
    """The adapter's rejection margins along one of the tuned model's own replies (teacher-forced)."""
    ids = comp.tokenize(prompt + reply, add_bos=True, special=True)
    start = len(comp.tokenize(prompt, add_bos=True, special=True))
    n = len(ids) - start
    if n < 1:
        return []
    logits = comp.hold({r: Hold(0, ids[:-1], n) for r in ("large", "tuned")})
    return rejection_margins(logits["large"], logits["tuned"], comp.vocab.n_vocab, comp.vocab.mask)


def summary(rows: Sequence[Row]) -> dict[str, Any]:
    return {
        r.label: {"accuracy": r.accuracy, "styled": r.style, "marked": r.marked, "open": r.open} for r in rows
    }
