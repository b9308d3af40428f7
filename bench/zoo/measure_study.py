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
        if name in study and len(study[name]["rows"]) == len(res["rows"]):
            continue
        comp = Composite.load(Recipe.load(args.zoo / f"{name}.yaml"))
        try:
            prompts = prompts_from(args.zoo / f"{name}.heldout.jsonl", len(res["rows"][0]["replies"]))
            chat = [comp.chat_prompt([{"role": "user", "content": p}]) for p in prompts]
            rows = {}
            for row in res["rows"]:
                rows[row["setting"]] = [
                    token_ratios(comp, p, reply).tolist() for p, reply in zip(chat, row["replies"], strict=True)
                ]
        finally:
            comp.close()
        study[name] = {"style": res["spec"]["style"], "rows": rows, "replies": {r["setting"]: r["replies"] for r in res["rows"]}}
        out_path.write_text(json.dumps(study) + "\n", encoding="utf-8")
        print(f"{name}: scored", file=sys.stderr, flush=True)
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
    print(f"{'statistic':<14} {'all':>5} " + " ".join(f"{n[:14]:>14}" for n in names))
    for stat, (overall, per) in table.items():
        print(f"{stat:<14} {overall:>5.0%} " + " ".join(f"{per[n]:>14.0%}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
