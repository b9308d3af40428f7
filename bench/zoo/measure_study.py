"""Which marker-free statistic agrees with the zoo's markers? (docs/steering-zoo.md, "The measure")

    nice python bench/zoo/measure_study.py [--zoo bench/results/zoo]

Reads the replies calibrate_zoo.py stored (ZOO/calibration.json: every setting's open replies on
every adapter), scores each reply token by token with the tuned and the base member alone
(teacher-forced through Composite.score, as tune/style_measure.py does), and for each candidate
statistic of the per-token log-ratios (the mean, the sum, the mean of the top k) fits the
per-adapter threshold on the tuned vs base replies (style_measure.fit_threshold) and counts how
often it agrees with the style's marker over all replies of all settings. Writes
ZOO/measure_study.json (the per-token ratios too, for re-analysis) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from styles import MARKERS, marked  # noqa: E402

from nanocommander.engine.request.recipe import Recipe  # noqa: E402
from nanocommander.engine.runtime.composite import Composite  # noqa: E402
from nanocommander.tune.calibrate import prompts_from  # noqa: E402
from nanocommander.tune.style_measure import STATISTICS, fit_threshold, token_ratios  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=Path("bench/results/zoo"))
    args = ap.parse_args()
    cal = json.loads((args.zoo / "calibration.json").read_text())
    out_path = args.zoo / "measure_study.json"
    study = json.loads(out_path.read_text()) if out_path.exists() else {}
    for name, res in cal.items():
        have = study.get(name, {"rows": {}, "replies": {}})
        todo = [r for r in res["rows"] if have["replies"].get(r["setting"]) != r["replies"]]
        if not todo:
            continue
        comp = Composite.load(Recipe.load(args.zoo / f"{name}.yaml"))
        try:
            prompts = prompts_from(args.zoo / f"{name}.heldout.jsonl", len(res["rows"][0]["replies"]))
            chat = [comp.chat_prompt([{"role": "user", "content": p}]) for p in prompts]
            for row in todo:
                have["rows"][row["setting"]] = [
                    token_ratios(comp, p, reply).tolist()
                    for p, reply in zip(chat, row["replies"], strict=True)
                ]
                have["replies"][row["setting"]] = row["replies"]
        finally:
            comp.close()
        keep = [r["setting"] for r in res["rows"]]  # calibrate's order; rows it no longer has dropped
        have["rows"] = {k: have["rows"][k] for k in keep}
        have["replies"] = {k: have["replies"][k] for k in keep}
        study[name] = dict(have, style=res["spec"]["style"])
        out_path.write_text(json.dumps(study) + "\n", encoding="utf-8")
        print(f"{name}: scored {len(todo)} rows", file=sys.stderr, flush=True)
    table = {}
    for stat, fn in STATISTICS.items():
        agree = total = 0
        per = {}
        for name, s in study.items():
            rule = MARKERS[s["style"]]
            value = {k: [fn(np.asarray(v)) for v in vs] for k, vs in s["rows"].items()}
            measure = fit_threshold(value["tuned"], value["base"])
            a = n = 0
            for k, vs in value.items():
                for v, reply in zip(vs, s["replies"][k], strict=True):
                    a += measure.styled(v) == marked(reply, rule)
                    n += 1
            per[name] = a / n
            agree, total = agree + a, total + n
        table[stat] = (agree / total, per)
    names = list(study)
    lines = [f"| statistic | all | {' | '.join(names)} |", "|---" * (len(names) + 2) + "|"]
    for stat, (overall, per) in table.items():
        lines.append(f"| {stat} | {overall:.0%} | " + " | ".join(f"{per[n]:.0%}" for n in names) + " |")
    (args.zoo / "measure_study.md").write_text("\n".join(lines) + "\n\n" + report(cal, study) + "\n")
    print("\n".join(lines))
    print(report(cal, study))
    return 0


def report(cal: dict, study: dict) -> str:
    """Every setting on every adapter, styled by the product's statistic (style_measure.DEFAULT),
    chosen by calibrate's own `choose`: what `calibrate` reports for the same replies."""
    from nanocommander.tune import calibrate as calmod
    from nanocommander.tune.style_measure import DEFAULT

    fn = STATISTICS[DEFAULT]
    out = []
    for name, res in cal.items():
        s = study[name]
        rule = MARKERS[s["style"]]
        value = {k: [fn(np.asarray(v)) for v in vs] for k, vs in s["rows"].items()}
        measure = fit_threshold(value["tuned"], value["base"])
        rows = []
        for r in res["rows"]:
            right, asked = (int(x) for x in r["facts"].split("/"))
            label = r["setting"]
            member = label if label in ("large", "tuned", "base") else "composite"
            row = calmod.Row(label, "large" if r.get("reference") else member, steer=_steer(label))
            row.correct, row.asked, row.reference = right, asked, bool(r.get("reference"))
            row.open = len(value[label])
            row.styled = sum(measure.styled(v) for v in value[label])
            row.marked = sum(marked(x, rule) for x in s["replies"][label])
            rows.append(row)
        chosen = calmod.choose(rows)
        refused = calmod.no_setting_keeps_facts(rows, chosen)
        by = {r.label: r for r in rows}
        out.append(
            f"\n### {name} (chosen: {'none: ' + refused if refused else chosen.label}; "
            f"threshold {measure.threshold:.2f} nats, {DEFAULT})\n"
        )
        out.append("| setting | facts | kept vs large | styled (measure) | of tuned | styled (marker) |")
        out.append("|---|---|---|---|---|---|")
        for r in rows:
            kept = r.accuracy / by["large"].accuracy if by["large"].accuracy else float("nan")
            of = r.styled / by["tuned"].styled if by["tuned"].styled else float("nan")
            mark = " **(chosen)**" if r is chosen and not refused else ""
            out.append(
                f"| {r.label}{mark} | {r.correct}/{r.asked} | {kept:.0%} | {r.styled}/{r.open} | {of:.0%} | "
                f"{r.marked}/{r.open} |"
            )
    return "\n".join(out)


def _steer(label: str):
    """The steer of a calibrate row, from its label (for `choose`'s cheapness)."""
    from nanocommander.engine.request.decode_options import RECOMMENDED, Steer

    if label.startswith("recommended"):
        return RECOMMENDED
    if label.startswith("gated"):
        return Steer("gated", reject=2.0)
    if label.startswith("proxy"):
        return Steer()
    return None


if __name__ == "__main__":
    raise SystemExit(main())
