"""Calibrate every trained zoo adapter and report every setting on every adapter (docs/steering-zoo.md).

    nice python bench/zoo/calibrate_zoo.py [--zoo bench/results/zoo] [--facts N] [--open N] [--num-predict N]  (calibrate's defaults)

For each OUT/NAME.yaml with its adapter present: `tune.calibrate.calibrate` (members, proxy, the
fixed recommended rule, the adapter-relative variants; all generated through the engine), then a
markdown table row per setting (facts kept vs large alone, replies styled vs tuned alone, by the
marker-free measure and by the style's marker) and the measure's agreement with the marker over
every open reply of every setting. Results: ZOO/calibration.json and ZOO/calibration.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from styles import INSTRUCTIONS, MARKERS, marked  # noqa: E402

from nanocommander.tune.calibrate import BUDGET, calibrate, steered_rows  # noqa: E402
from nanocommander.tune.style_measure import agreement  # noqa: E402


def ratio(a: float, b: float) -> str:
    return f"{a / b:.0%}" if b else "-"


def row_dict(r, by: dict) -> dict:
    return {
        "setting": r.label,
        "facts": f"{r.correct}/{r.asked}",
        "facts_kept": ratio(r.accuracy, by["large"].accuracy),
        "styled": f"{r.styled}/{r.open}",
        "styled_of_tuned": ratio(r.styled, by["tuned"].styled),
        "marked": f"{r.marked}/{r.open}",
        "reference": bool(getattr(r, "reference", False)),
        "replies": r.replies,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=Path("bench/results/zoo"))
    ap.add_argument("--only", help="comma-separated adapter names")
    ap.add_argument("--facts", type=int, default=BUDGET.facts)
    ap.add_argument("--open", type=int, default=BUDGET.open)
    ap.add_argument("--num-predict", type=int, default=BUDGET.num_predict)
    ap.add_argument(
        "--add", metavar="LABEL", help="run only this calibrate candidate (its label's start) and add its row"
    )
    args = ap.parse_args()
    index = json.loads((args.zoo / "zoo.json").read_text())
    out_json = args.zoo / "calibration.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    for name, spec in index.items():
        if args.only and name not in args.only.split(","):
            continue
        if not (args.zoo / f"{name}.gguf").exists():
            continue
        rule = MARKERS[spec["style"]]
        t0 = time.monotonic()

        def only(margins, alpha, want=args.add):
            return [r for r in steered_rows(margins, alpha) if r.label.startswith(want)]

        rows, chosen, measure = calibrate(
            args.zoo / f"{name}.yaml",
            data=args.zoo / f"{name}.heldout.jsonl",
            n_facts=args.facts,
            n_open=args.open,
            num_predict=args.num_predict,
            marker=lambda reply, rule=rule: marked(reply, rule),
            prompt_baseline=None if args.add else INSTRUCTIONS[spec["style"]],
            settings=only if args.add else None,
        )
        by = {r.label: r for r in rows}
        dicts = [row_dict(r, by) for r in rows]
        if args.add:  # keep the earlier run; add (or replace) the new rows before the reference row
            new = [d for r, d in zip(rows, dicts, strict=True) if r.member == "composite"]
            rows0 = results[name]["rows"]
            replaced = [i for i, d in enumerate(rows0) if d["setting"].startswith(args.add)]
            old = [d for d in rows0 if not d["setting"].startswith(args.add)]
            at = (
                replaced[0]
                if replaced
                else next((i for i, d in enumerate(old) if d.get("reference")), len(old))
            )
            results[name]["rows"] = old[:at] + new + old[at:]
            results[name]["seconds_added"] = round(time.monotonic() - t0, 1)
        else:
            measured = [measure.styled(x) for r in rows for x in r.ratios]
            markers = [marked(x, rule) for r in rows for x in r.replies]
            results[name] = {
                "spec": spec,
                "seconds": round(time.monotonic() - t0, 1),
                "chosen": chosen.label,
                "measure": measure.to_dict(),
                "agreement": agreement(measured, markers),
                "rows": dicts,
            }
        out_json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"{name}: {chosen.label} in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    lines = []
    for name, res in results.items():
        lines.append(
            f"\n### {name} (chosen: {res['chosen']}; measure/marker agreement {res['agreement']:.0%}; "
            f"threshold {res['measure']['threshold']:.3f} nats/token; {res['seconds']} s)\n"
        )
        lines.append("| setting | facts | kept vs large | styled (measure) | of tuned | styled (marker) |")
        lines.append("|---|---|---|---|---|---|")
        for r in res["rows"]:
            lines.append(
                f"| {r['setting']} | {r['facts']} | {r['facts_kept']} | {r['styled']} | "
                f"{r['styled_of_tuned']} | {r['marked']} |"
            )
    (args.zoo / "calibration.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
