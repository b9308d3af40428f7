"""`nanocommander eval --general FILE --sweep`: style against knowledge, per steering setting.

For each setting (a member alone, or the composite with a mode, alpha and thresholds) one table
row gives: the style loss (mean NLL per reference token of the held-out style data, teacher-forced
through that setting's own next-token distribution), the accuracy on short general questions
(greedy replies, normalised substring match against the reference answers), the steered
fraction of generated tokens and tokens/s. A setting is marked when its style loss is within
10 % of the tuned model's and its accuracy at least 95 % of the large model's.

Teacher-forced scoring drives the engine's own strategy for each setting with a sampler that
returns the reference token (tune/forced.py), so a row's style loss is what a user's request with
that setting samples from; the members evaluate each example once and the strategies' Needs are
served from those logits (the plain reading, which leaves sentences out, is evaluated for real).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanocommander.engine.request.decode_options import RECOMMENDED, Steer
from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.tune import data as datamod
from nanocommander.tune import forced, prompted
from nanocommander.tune.errors import DataError
from nanocommander.tune.style_measure import fit_threshold, text_ratio
from nanocommander.tune.tokens import GGUFTokenizer, encode

LABEL_WIDTH = 44  # the table's first column
BUILTIN = Path(__file__).with_name("general_questions.jsonl")
LOGP_FLOOR = math.log(1e-9)  # a reference token a setting cannot produce costs 20.7 nats, not infinity


@dataclass
class Setting:
    label: str
    member: str = "composite"
    alpha: float | None = None
    steer: Steer | None = None
    system: str | None = None  # the system prompt this row's requests carry (--prompt-baseline)
    nll: float = 0.0
    tokens: int = 0
    correct: int = 0
    asked: int = 0
    generated: int = 0
    steered: int = 0
    seconds: float = 0.0
    styled: int = 0  # general replies containing the style marker (--style-marker)
    ratios: list[float] = field(default_factory=list)  # per reply: mean log p_tuned - log p_base
    measured: int = 0  # replies styled by the marker-free measure (tune/style_measure.py)
    marked: bool = False
    token_logprobs: list[float] = field(default_factory=list, repr=False)  # per scored style token

    @property
    def style(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def accuracy(self) -> float:
        return self.correct / self.asked if self.asked else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "setting": self.label,
            "member": self.member,
            "alpha": self.alpha,
            "steer": self.steer.to_dict() if self.steer else None,
            "system": self.system,
            "style_nll": self.style if self.tokens else None,
            "general_accuracy": self.accuracy if self.asked else None,
            "steered_fraction": self.steered / self.generated if self.generated else None,
            "tokens_per_s": self.generated / self.seconds if self.seconds else None,
            "styled_fraction": self.styled / self.asked if self.asked else None,
            "measured_fraction": self.measured / len(self.ratios) if self.ratios else None,
            "marked": self.marked,
        }


@dataclass
class SweepReport:
    recipe: str
    settings: list[Setting]
    notes: list[str] = field(default_factory=list)
    marker: str | None = None

    def table(self) -> str:
        head = f"{'setting':<{LABEL_WIDTH}} {'style NLL':>9} {'general':>8} {'steered':>8} {'tok/s':>7}"
        if self.marker:
            head += f" {'styled':>7}"
        if any(s.ratios for s in self.settings):
            head += f" {'measured':>8}"
        lines = [head]
        for s in self.settings:
            d = s.to_dict()
            style = f"{s.style:>9.4f}" if s.tokens else f"{'-':>9}"
            acc = f"{s.accuracy:>8.1%}" if s.asked else f"{'-':>8}"
            frac = f"{d['steered_fraction']:>8.1%}" if d["steered_fraction"] is not None else f"{'-':>8}"
            speed = f"{d['tokens_per_s']:>7.1f}" if d["tokens_per_s"] else f"{'-':>7}"
            styled = f" {s.styled / s.asked:>7.0%}" if self.marker and s.asked else ""
            styled += f" {s.measured / len(s.ratios):>8.0%}" if s.ratios else ""
            lines.append(
                f"{s.label:<{LABEL_WIDTH}} {style} {acc} {frac} {speed}{styled}{'  *' if s.marked else ''}"
            )
        lines.append(
            "* style loss within 10 % of the tuned model's and accuracy >= 95 % of the large model's"
        )
        return "\n".join(lines + self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "settings": [s.to_dict() for s in self.settings], "notes": self.notes}


def grid(alphas: list[float | None], sweep: bool, recipe_steer: Steer | None) -> list[Setting]:
    """The members, proxy at each alpha, and with --sweep a small grid of modes and thresholds."""
    out = [Setting("large", "large"), Setting("tuned", "tuned")]
    for a in alphas:
        out.append(
            Setting(f"proxy a={a:g}" if a is not None else "proxy (recipe alpha)", alpha=a, steer=Steer())
        )
    if recipe_steer is not None and recipe_steer.mode != "proxy" and not sweep:
        out.append(Setting(f"recipe {_describe(recipe_steer)}", steer=recipe_steer))
    if sweep:
        modes = [
            Steer("plausible", beta=0.01),
            Steer("plausible", beta=0.001),
            Steer("gated", top1=0.5),
            Steer("gated", top1=0.8),
            Steer("gated", delta=4.0),
            Steer("gated", opening=12, follow=4, delta=4.0),
            Steer("gated", reject=6.0),
            Steer("nudge", top1=0.4),
            Steer("nudge", reject=4.0, word=True),
            RECOMMENDED,
            dataclasses.replace(RECOMMENDED, plain=0.3),
            dataclasses.replace(RECOMMENDED, plain=None),
            Steer("nudge", reject=8.0, word=True),
        ]
        top = max((a for a in alphas if a is not None), default=None)
        out += [Setting(_describe(m) + (f" a={top:g}" if top else ""), alpha=top, steer=m) for m in modes]
    return out


def _describe(steer: Steer) -> str:
    if steer == RECOMMENDED:
        return "recommended"
    changed = [
        f.name for f in dataclasses.fields(Steer) if getattr(steer, f.name) != getattr(RECOMMENDED, f.name)
    ]
    if len(changed) == 1:  # a variant of the recommended setting
        return f"recommended({changed[0]}={getattr(steer, changed[0])})"
    params = ",".join(f"{k}={v}" for k, v in steer.to_dict().items() if k != "mode")
    return f"{steer.mode}({params})" if params else steer.mode


def load_general(path: str | Path) -> list[tuple[str, list[str]]]:
    """JSONL lines {"question": ..., "answers": [...]} (or "answer": "...")."""
    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if "_meta" in row:  # the header line: what the file is and its licence
                continue
            answers = row.get("answers") or [row["answer"]]
            items.append((str(row["question"]), [str(a) for a in answers]))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise DataError(f'{path}:{n}: expected {{"question": ..., "answers": [...]}}') from None
    if not items:
        raise DataError(f"{path}: no questions")
    return items


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " " + re.sub(r"[^0-9a-z]+", " ", text).strip() + " "


def correct(reply: str, answers: list[str]) -> bool:
    got = normalise(reply)
    return any(normalise(a) in got for a in answers)


def ask_all(
    comp,
    items,
    settings: list[Setting],
    num_predict: int,
    progress: bool,
    marker: str | None = None,
    measure: bool = False,
) -> None:
    """Greedy replies to every question under every setting; counts right answers, speed, steering."""

    greedy = merge_sampling({"temperature": 0, "repeat_penalty": 1.0})
    for i, (question, answers) in enumerate(items):
        turn = [{"role": "user", "content": question}]
        prompts: dict[str | None, str] = {}  # per system prompt (None: the recipe's)
        for s in settings:
            if s.system not in prompts:
                prompts[s.system] = comp.chat_prompt(turn, system=s.system, num_predict=num_predict)
            req = GenerateRequest(
                prompt=prompts[s.system],
                sampling=greedy,
                num_predict=num_predict,
                alpha=s.alpha,
                member=s.member,
                steer=s.steer,
            )  # type: ignore[arg-type]
            chunks = list(comp.generate(req))
            stats = chunks[-1].stats
            reply = "".join(c.text for c in chunks)
            s.correct += correct(reply, answers)
            s.styled += bool(marker) and marker.lower() in reply.lower()
            if measure:  # read under the plain prompt: an instruction would shift both small models
                if None not in prompts:
                    prompts[None] = comp.chat_prompt(turn, num_predict=num_predict)
                s.ratios.append(text_ratio(comp, prompts[None], reply))
            s.asked += 1
            s.generated += stats.eval_count
            s.steered += stats.steered
            s.seconds += stats.eval_s
        if progress:
            print(f"\rgeneral: {i + 1}/{len(items)}", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)


def request(s: Setting) -> GenerateRequest:
    """The request a user would send for this setting (the prompt and limits are filled in per reply)."""
    return GenerateRequest(prompt=[], alpha=s.alpha, member=s.member, steer=s.steer)  # type: ignore[arg-type]


def score_all(comp, encoded, settings: list[Setting]) -> None:
    """Teacher-forced style loss of every setting, each token scored under the distribution the
    engine's own strategy for that setting samples from (tune/forced.py), from one pass of the
    members per example."""
    roles = {r for s in settings for r in comp.plan(request(s)).roles}
    for enc in encoded:
        replies = forced.spans(enc.mask)
        if not replies:
            continue
        teacher = forced.Teacher(comp, enc.ids, replies[0][0], roles)
        for s in settings:
            for begin, end in replies:
                lps = forced.logprobs(comp, teacher, request(s), begin, end)
                s.token_logprobs += lps
                s.nll -= sum(max(lp, LOGP_FLOOR) for lp in lps)
                s.tokens += len(lps)


def apply_measure(settings: list[Setting]) -> str:
    """Fit the marker-free threshold on the tuned vs base replies; count each setting's styled ones."""
    by = {s.label: s for s in settings}
    m = fit_threshold(by["tuned"].ratios, by["base"].ratios)
    for s in settings:
        s.measured = sum(m.styled(x) for x in s.ratios)
    return f"measured: styled when log p_tuned - log p_base > {m.threshold:.3f} nats/token (separates {m.separation:.0%})"


def mark(settings: list[Setting]) -> None:
    by = {s.label: s for s in settings}
    tuned, large = by["tuned"], by["large"]
    for s in settings:
        style_ok = not tuned.tokens or (s.tokens and s.style <= tuned.style * 1.10)
        acc_ok = not large.asked or (s.asked and s.accuracy >= large.accuracy * 0.95)
        s.marked = bool(style_ok and acc_ok and (tuned.tokens or large.asked))


def _score_prompted(comp, tokenizer, examples, s: Setting, max_length: int) -> list[str]:
    """Score the style data with the row's instruction as the system prompt (raw text has none)."""
    chats, left_out = prompted.with_instruction(examples, s.system or "")
    encoded, _ = encode(tokenizer, chats, max_length) if chats else ([], None)
    score_all(comp, encoded, [s])
    return [f"{s.label}: {left_out} raw-text examples not scored (no system turn)"] if left_out else []


def sweep(
    recipe_path: str | Path,
    *,
    data: str | Path | None,
    general: str | Path | None,
    alphas: list[float | None],
    run_grid: bool,
    fmt: str | None = None,
    max_length: int = 1024,
    limit: int | None = None,
    num_predict: int = 32,
    progress: bool = True,
    marker: str | None = None,
    measure: bool = False,
    prompt_baseline: str | None = None,
) -> SweepReport:
    """The table: each setting's style loss, accuracy, steering and speed (see the module's doc).

    `prompt_baseline`: also a row of the large model alone with this instruction as its system
    prompt (`prompted.FROM_RECIPE`: the recipe's `system:`), scored like the others."""

    recipe = Recipe.load(recipe_path)
    items = load_general(general)[:limit] if general else []
    settings = grid(alphas, run_grid, recipe.steer)
    if measure:  # the base model's replies are the unstyled side the measure is fitted on
        settings.insert(2, Setting("base", "base"))
    notes = []
    if prompt_baseline is not None:
        text = prompted.instruction(recipe, prompt_baseline)
        settings.insert(3 if measure else 2, Setting(prompted.LABEL, "large", system=text))
        notes.append(f"{prompted.LABEL}: the large model alone with the system prompt {text!r}")
    views = any(s.steer is not None and s.steer.views for s in settings)
    comp = Composite.load(recipe, views=views)
    try:
        for s in settings:  # `reject: auto` is measured on this adapter, as a request would measure it
            if s.steer is not None and s.member == "composite":
                s.steer = comp.auto_reject.resolve(comp, s.steer)
        if data:
            examples = datamod.load(data, fmt=fmt).examples
            examples = examples[:limit] if limit else examples
            tokenizer = GGUFTokenizer(comp.primary.path, template=comp.template)
            encoded, summary = encode(tokenizer, examples, min(max_length, comp.n_ctx))
            if not encoded:
                raise DataError(f"{data}: no example has a reference answer to score")
            notes.append(f"style data: {summary}")
            t0 = time.perf_counter()
            score_all(comp, encoded, [s for s in settings if s.system is None])
            for s in settings:
                if s.system is not None:
                    notes += _score_prompted(comp, tokenizer, examples, s, min(max_length, comp.n_ctx))
            notes.append(f"style scoring: {time.perf_counter() - t0:.1f} s")
        if items:
            ask_all(comp, items, settings, num_predict, progress, marker, measure)
            notes.append(f"general questions: {len(items)} from {general}")
            if measure:
                notes.append(apply_measure(settings))
    finally:
        comp.close()
    mark(settings)
    return SweepReport(str(recipe_path), settings, notes, marker)
