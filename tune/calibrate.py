"""`nanocommander calibrate RECIPE`: pick the steering setting for this recipe's own adapter.

Fixed thresholds (`reject: 6` nats) fit the adapters they were tuned on and lose the style on
others: an adapter whose tuned model never rejects the large model's word by 6 nats is never
asked. So the candidates here are expressed relative to the adapter's own statistics: the
margins by which the tuned model rejects the large model's favourite token on the tuned model's
own replies (`rejection_margins`); `reject` at a few quantiles of those margins. Every candidate
is run through the engine (Composite.generate: the behaviour a user gets) on a handful of short
factual questions and open prompts; the chosen one keeps the most replies styled (the marker-free
measure, tune/style_measure.py) subject to accuracy >= `keep` x the large model's.

The cost is settings x (questions + prompts) x tokens, so the defaults (`BUDGET`) are sized to
finish within 10 minutes for the Qwen2.5-Coder 1.5B/0.5B Q4_K_M pair on a 2-core CPU
(docs/steering-zoo.md, "Budget"): every item is asked of all rows in turn, so each prompt is
read once per member and phase rather than once per row, and a factual reply stops as soon as
it holds the answer. A reference row, the large model alone with a style instruction, shows
whether prompting alone would do; it is never chosen (it is not a `steer:` value).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nanocommander.engine.decode.steering import rejection_margins as rejection_margins
from nanocommander.engine.request.decode_options import AUTO, RECOMMENDED, Steer
from nanocommander.tune.calibrate_report import prompt_note as prompt_note
from nanocommander.tune.calibrate_report import summary as summary
from nanocommander.tune.calibrate_report import table as table
from nanocommander.tune.calibrate_report import write_steer as write_steer
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
BASELINE = "large + style instruction"


@dataclass(frozen=True)
class Budget:
    """What one calibration asks: `facts` questions and `open` prompts of at most `num_predict`
    tokens each, of every row (docs/steering-zoo.md, "Budget", for the measured time)."""

    facts: int = 8
    open: int = 6
    num_predict: int = 32


BUDGET = Budget()  # read at call time by tune --into / create --adapter (tests shrink it)


@dataclass
class Row:
    """One setting's results: facts right, open replies styled (measure and, if given, marker).

    `reference` rows (the style-instruction baseline) are shown and reported, never chosen;
    `instruction` is the system prompt a row's chats carry instead of the recipe's."""

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
    reference: bool = False
    instruction: str | None = None
    seconds: float = 0.0

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


def adapter_relative_rows(margins: Sequence[float]) -> list[Row]:
    """The candidates derived from this adapter's rejection margins: the one place to add a
    variant (an "auto" rule of the engine, say) so that calibrate tries it on every adapter."""
    return [
        Row(f"recommended reject {s.reject:g} (adapter-relative)", steer=s)
        for s in relative_settings(margins)
    ]


def member_rows() -> list[Row]:
    """The members alone: large (the facts to keep), tuned and base (the style measure's fit)."""
    return [Row("large", "large"), Row("tuned", "tuned"), Row("base", "base")]


# the recommended rule with its gate open at every token: a dialect's mid-sentence words too, at
# the cost of the tuned model's every step (the base still never runs)
EVERYWHERE = Steer("nudge", reject=AUTO, word=True, plain=0.0)


def steered_rows(margins: Sequence[float], alpha: float = 1.0) -> list[Row]:
    """The `steer:` candidates: proxy (at the recipe's `alpha`), the recommended rule (its `reject:
    auto` measured by the engine), the old fixed 6 nats, the adapter-relative ones, gated."""
    return [
        Row(f"proxy a={alpha:g}", steer=Steer()),
        Row("recommended (reject auto)", steer=RECOMMENDED),
        Row("recommended, fixed reject 6", steer=dataclasses.replace(RECOMMENDED, reject=6.0)),
        Row("nudge reject auto, every token", steer=EVERYWHERE),
        *adapter_relative_rows(margins),
        Row("gated reject 2", steer=Steer("gated", reject=2.0)),
    ]


def candidates(margins: Sequence[float]) -> list[Row]:
    """The members alone, proxy, the fixed recommended rule and the adapter-relative ones."""
    return member_rows() + steered_rows(margins)


def baseline_row(instruction: str | None) -> Row | None:
    """The large model alone with `instruction` as its system prompt; None without one."""
    if not instruction or not instruction.strip():
        return None
    return Row(BASELINE, "large", reference=True, instruction=instruction)


def cheapness(steer: Steer | None) -> int:
    """How many member evaluations a rule saves: nudge never runs the base, a lazy gate (one the
    large model alone can keep shut) lets the small members sleep; proxy, plausible and an
    always-open gate run all three at every token."""
    return 0 if steer is None else int(steer.mode == "nudge") + int(steer.lazy)


def choose(rows: Sequence[Row], keep: float = 0.95) -> Row:
    """The composite row with the most styled replies among those keeping >= `keep` x large's
    accuracy (ties: the cheaper rule, then the higher accuracy, then the earlier row); with none,
    the most accurate. Reference rows are never candidates. Cheaper (`cheapness`): one member less
    where possible, the speed a user gets."""
    by = {r.label: r for r in rows}
    if "large" not in by:
        raise TrainingError("calibration needs the large model's row to compare with")
    floor = keep * by["large"].accuracy
    pool = [r for r in rows if r.member == "composite" and not r.reference]
    if not pool:
        raise TrainingError("calibration has no composite setting to choose from")
    ok = [r for r in pool if r.asked and r.accuracy >= floor - 1e-9]
    if not ok:
        return max(pool, key=lambda r: (r.accuracy, -pool.index(r)))
    return max(
        ok,
        key=lambda r: (
            r.style,
            cheapness(r.steer),
            r.accuracy,
            -pool.index(r),
        ),
    )


def no_setting_keeps_facts(rows: Sequence[Row], chosen: Row, keep: float = 0.95) -> str | None:
    """One line when even the chosen setting loses the facts (then nothing should be written): the
    adapter is likely broken (a diverged run), and no steering fixes that."""
    by = {r.label: r for r in rows}
    large, tuned = by["large"], by.get("tuned")
    if chosen.accuracy >= keep * large.accuracy - 1e-9:
        return None
    alone = f"; the tuned model alone {tuned.correct}/{tuned.asked}" if tuned and tuned.asked else ""
    return (
        f"no steering setting keeps {keep:.0%} of the large model's facts (best: {chosen.label}, "
        f"{chosen.correct}/{chosen.asked}; large {large.correct}/{large.asked}{alone}): the adapter may be "
        "broken (check its training loss) or its style cost facts (try prompting the large model); "
        "steer: is left as it was"
    )


def prompts_from(data: Path | None, limit: int) -> list[str]:
    """The first user turn of each held-out style chat, or the shipped prompts."""
    if data is None:
        return OPEN_PROMPTS[:limit]
    from nanocommander.tune import data as datamod

    examples = datamod.load(data, skip_bad=True).examples  # a few prompts suffice: one-line errors only
    out = []
    for e in examples:
        first = next((m["content"] for m in e.messages if m.get("role") == "user"), None)
        if first:
            out.append(first)
    if not out:
        raise DataError(f"{data}: no user turns to use as calibration prompts")
    return out[:limit]


def run(
    comp,
    rows: list[Row],
    facts: Sequence[tuple[str, list[str]]],
    prompts: Sequence[str],
    num_predict: int,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Generate every row's replies through the engine (facts right; each open reply's ratio).

    Item-major: each question or prompt is asked of every row in turn, so the members' caches
    keep its prompt and only the new reply is read. `facts` and `prompts` are user turns, rendered
    through the recipe's chat template (with the row's `instruction` as system prompt, if any)."""
    from nanocommander.tune.sweep import correct

    rendered: dict[tuple[str, str | None], str] = {}

    def chat(text: str, row: Row | None) -> str:
        system = row.instruction if row is not None else None
        key = (text, system)
        if key not in rendered:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": text}
            ]
            rendered[key] = comp.chat_prompt(messages, num_predict=num_predict)
        return rendered[key]

    total = len(facts) + len(prompts)
    for i, (question, answers) in enumerate(facts, 1):
        for r in rows:
            t0 = time.monotonic()
            reply = generate(
                comp, r, chat(question, r), num_predict, until=lambda s, a=answers: correct(s, a)
            )
            r.correct += correct(reply, answers)
            r.asked += 1
            r.seconds += time.monotonic() - t0
        if progress:
            progress(f"{i}/{total}")
    for i, p in enumerate(prompts, len(facts) + 1):
        for r in rows:
            t0 = time.monotonic()
            reply = generate(comp, r, chat(p, r), num_predict)
            r.replies.append(reply)
            r.ratios.append(text_ratio(comp, chat(p, None), reply))  # judged in the recipe's own chat
            r.seconds += time.monotonic() - t0
        if progress:
            progress(f"{i}/{total}")


def score(rows: Sequence[Row], measure: StyleMeasure, marker=None) -> None:
    """Count styled replies by the measure and, when given, by `marker(reply) -> bool`."""
    for r in rows:
        r.open = len(r.ratios)
        r.styled = sum(measure.styled(x) for x in r.ratios)
        r.marked = sum(bool(marker(x)) for x in r.replies) if marker else 0


def load_recipe(recipe):
    """A Recipe from a path (errors as one TrainingError line) or as given; it must have an adapter."""
    from nanocommander.engine.request.recipe import Recipe
    from nanocommander.errors import NanoCommanderError

    where = recipe if isinstance(recipe, Path) else getattr(recipe, "name", "recipe")
    if isinstance(recipe, (str, Path)):
        try:
            recipe = Recipe.load(Path(recipe))
        except (NanoCommanderError, OSError, ValueError) as exc:
            message = " ".join(str(exc).split())
            raise TrainingError(message if str(where) in message else f"{where}: {message}") from None
    if not recipe.tuned.is_adapter:
        raise TrainingError(f"{where}: calibrate needs a recipe whose tuned member is an adapter")
    return recipe


def calibrate(
    recipe,
    *,
    data: Path | None = None,
    general: Path | None = None,
    n_facts: int = BUDGET.facts,
    n_open: int = BUDGET.open,
    num_predict: int = BUDGET.num_predict,
    marker=None,
    keep: float = 0.95,
    prompt_baseline: str | None = None,
    progress: Callable[[str], None] | None = None,
    settings: Callable[[Sequence[float], float], list[Row]] | None = None,
) -> tuple[list[Row], Row, StyleMeasure]:
    """Fit the style measure, derive the adapter-relative settings, run them all, choose one.

    `recipe` is a path or a Recipe. The reference row uses `prompt_baseline`, else the recipe's
    `system:` (which every other row's chats then carry too, so it repeats the large row)."""
    from nanocommander.engine.runtime.composite import Composite
    from nanocommander.tune.sweep import BUILTIN, load_general

    recipe = load_recipe(recipe)
    facts = load_general(general or BUILTIN)[:n_facts]
    prompts = prompts_from(data, n_open)
    say = progress or (lambda _msg: None)
    members = member_rows()
    baseline = baseline_row(prompt_baseline or recipe.system)
    same_as_large = baseline is not None and not prompt_baseline  # the recipe's system: in every row
    if baseline is not None and not same_as_large:
        members.append(baseline)
    comp = Composite.load(recipe)
    try:
        comp.auto_reject.resolve(comp, RECOMMENDED)  # on fresh caches, as a served `steer: recommended` is
        say(f"members alone on {len(facts)} questions and {len(prompts)} prompts")
        run(comp, members, facts, prompts, num_predict, lambda m: say(f"members {m}"))
        try:
            measure = fit_threshold(members[1].ratios, members[2].ratios)
        except ValueError:
            raise TrainingError(
                "calibrate: the tuned and base models gave no reply to score; raise --num-predict"
            ) from None
        margins = [
            m
            for p, reply in zip(prompts, members[1].replies, strict=True)
            for m in margins_of(comp, p, reply)
        ]
        steered = (settings or steered_rows)(margins, recipe.alpha)
        say(f"{len(steered)} steering settings")
        run(comp, steered, facts, prompts, num_predict, lambda m: say(f"settings {m}"))
        if comp.auto_reject.measured is not None:  # say what `reject: auto` measured on this adapter
            for r in steered:
                if r.steer == RECOMMENDED:
                    r.label = f"recommended (reject auto = {comp.auto_reject.measured.reject:.2f})"
                elif r.steer == EVERYWHERE:
                    r.label = f"nudge reject auto = {comp.auto_reject.measured.reject:.2f}, every token"
    finally:
        comp.close()
    if same_as_large:
        baseline = dataclasses.replace(
            members[0], label=BASELINE, reference=True, instruction=recipe.system, seconds=0.0
        )  # the large row's own replies: nothing more was asked
        members.append(baseline)
    rows = members[:3] + steered + members[3:]
    score(rows, measure, marker)
    return rows, choose(rows, keep), measure


def generate(
    comp, row: Row, prompt: str, num_predict: int, until: Callable[[str], bool] | None = None
) -> str:
    """A greedy reply of `row`'s member and steering; stops early once `until(text so far)`."""
    from nanocommander.engine.request.options import merge_sampling
    from nanocommander.engine.request.types import GenerateRequest

    greedy = merge_sampling({"temperature": 0, "repeat_penalty": 1.0})
    req = GenerateRequest(
        prompt=prompt, sampling=greedy, num_predict=num_predict, member=row.member, steer=row.steer
    )  # type: ignore[arg-type]
    text = ""
    with contextlib.closing(comp.generate(req)) as chunks:  # closing early cancels within a round
        for c in chunks:
            text += c.text
            if until is not None and until(text):
                break
    return text


def margins_of(comp, prompt: str, reply: str) -> list[float]:
    """The adapter's rejection margins along one of the tuned model's own replies to `prompt`."""
    from nanocommander.engine.runtime.autoreject import margins_of as along

    return along(comp, comp.chat_prompt([{"role": "user", "content": prompt}]), reply)
