"""`nanocommander eval`: how well large, base, tuned and the composite predict held-out answers.

The measure is the mean negative log-likelihood per reference assistant token
(nats; lower is better), pooled over all examples so long answers weigh more,
exactly the quantity SFT minimises. Each model scores the same token ids, which
the composite's shared vocabulary guarantees. Scoring runs through the engine's
`Composite.score`, so the composite here is the composite that serves requests.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nanocommander.engine.request.options import SamplingOptions
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.tune import data as datamod
from nanocommander.tune.errors import DataError
from nanocommander.tune.tokens import Encoded, GGUFTokenizer, encode


@dataclass
class Score:
    label: str  # "large", "base", "tuned" or "composite a=0.5"
    member: str
    alpha: float | None = None
    nll: float = 0.0
    tokens: int = 0

    @property
    def mean(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.label,
            "member": self.member,
            "alpha": self.alpha,
            "mean_nll": self.mean,
            "perplexity": math.exp(self.mean) if self.tokens else None,
            "tokens": self.tokens,
        }


@dataclass
class Report:
    recipe: str
    data: str
    examples: int
    scores: list[Score]
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "data": self.data,
            "examples": self.examples,
            "scores": [s.to_dict() for s in self.scores],
            "samples": self.samples,
        }

    def table(self) -> str:
        lines = [f"{'model':<18} {'mean NLL':>9} {'ppl':>9} {'tokens':>7}"]
        best = min(s.mean for s in self.scores)
        for s in self.scores:
            mark = "  <- best" if s.mean == best else ""
            lines.append(f"{s.label:<18} {s.mean:>9.4f} {math.exp(s.mean):>9.3f} {s.tokens:>7}{mark}")
        return "\n".join(lines)


def parse_alphas(text: str | None) -> list[float | None]:
    """'0.5,1.0' -> [0.5, 1.0]; None -> [None] (the recipe's own alpha)."""
    if not text:
        return [None]
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DataError(f"--alpha expects numbers separated by commas, got '{text}'") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise DataError(f"--alpha expects finite numbers, got '{text}'")
    return list(values)


def evaluate(
    recipe_path: str | Path,
    data_path: str | Path,
    *,
    alphas: list[float | None] | None = None,
    fmt: str | None = None,
    max_length: int = 1024,
    limit: int | None = None,
    samples: int = 0,
    num_predict: int = 64,
    progress: bool = True,
) -> Report:
    """Score every model of the recipe on the reference answers of `data_path`."""

    recipe = Recipe.load(recipe_path)
    dataset = datamod.load(data_path, fmt=fmt)
    examples = dataset.examples[:limit] if limit else dataset.examples
    comp = Composite.load(recipe)
    try:
        tokenizer = GGUFTokenizer(comp.primary.path, template=comp.template)
        encoded, summary = encode(tokenizer, examples, min(max_length, comp.n_ctx))
        if not encoded:
            raise DataError(f"{data_path}: no example has a reference answer to score")
        if progress:
            print(f"eval data: {summary}", file=sys.stderr)
        scores = [Score("large", "large"), Score("base", "base"), Score("tuned", "tuned")]
        for a in alphas or [None]:
            shown = recipe.alpha if a is None else a
            scores.append(Score(f"composite a={shown:g}", "composite", shown))
        _score_all(comp, encoded, scores, progress)
        picked = [ex for ex in examples if ex.messages][:samples]
        sample_rows = [_sample(comp, ex, scores, num_predict) for ex in picked]
    finally:
        comp.close()
    return Report(str(recipe_path), str(data_path), len(encoded), scores, sample_rows)


def _score_all(comp, encoded: list[Encoded], scores: list[Score], progress: bool) -> None:

    total = len(encoded) * len(scores)
    with tqdm(total=total, desc="eval", unit="seq", file=sys.stderr, disable=not progress) as bar:
        for enc in encoded:
            start = next(i for i, m in enumerate(enc.mask) if m and i > 0)
            learned = [m for m in enc.mask[start:]]
            for s in scores:
                logp = comp.score(enc.ids, start, alpha=s.alpha, member=s.member)
                s.nll -= float(sum(lp for lp, m in zip(logp, learned, strict=True) if m))
                s.tokens += sum(learned)
                bar.update(1)


def _sample(comp, example: datamod.Example, scores: list[Score], num_predict: int) -> dict[str, Any]:
    """Greedy replies of each model to the conversation up to its last assistant turn."""

    messages = [{"role": m["role"], "content": m["content"]} for m in example.messages]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = comp.chat_prompt(messages[:last], num_predict=num_predict)
    row: dict[str, Any] = {
        "line": example.line,
        "prompt": messages[last - 1]["content"] if last else "",
        "reference": messages[last]["content"],
        "replies": {},
    }
    greedy = SamplingOptions(temperature=0.0, repeat_penalty=1.0, seed=0)
    for s in scores:
        if s.label == "base":
            continue
        req = GenerateRequest(
            prompt=prompt, sampling=greedy, num_predict=num_predict, alpha=s.alpha, member=s.member
        )  # type: ignore[arg-type]
        row["replies"][s.label] = "".join(chunk.text for chunk in comp.generate(req))
    return row


def format_samples(samples: list[dict[str, Any]]) -> str:
    out = []
    for row in samples:
        out.append(f"--- line {row['line']}: {row['prompt'][:200]!r}")
        out.append(f"  {'reference':<18} {row['reference'][:200]!r}")
        for label, text in row["replies"].items():
            out.append(f"  {label:<18} {text[:200]!r}")
    return "\n".join(out)


def write_json(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
