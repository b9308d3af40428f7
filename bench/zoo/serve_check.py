"""The calibrate figures through the server: the same prompts via the official `ollama` client.

    nice python bench/zoo/serve_check.py NAME [--zoo bench/results/zoo] [--setting LABEL]

Serves ZOO/NAME.yaml with `nanocommander serve` (runner processes, the default) on a free loopback
port, asks `/api/chat` (ollama 0.6 client, greedy) the facts and open prompts calibrate used, with
the steering of one calibrate row (default: the recipe's own `steer:`, i.e. `recommended`), and
compares each reply with the one calibrate got through `Composite.generate` for that row. Prints
how many are identical, the facts right and the markers seen.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from styles import MARKERS, marked  # noqa: E402

from nanocommander.tune.calibrate import BUDGET, prompts_from  # noqa: E402
from nanocommander.tune.sweep import BUILTIN, correct, load_general  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    import ollama

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--zoo", type=Path, default=Path("bench/results/zoo"))
    ap.add_argument("--setting", help="a calibrate row label (default: the recipe's recommended row)")
    ap.add_argument("--steer", default="recommended", help="the steer sent with each request")
    args = ap.parse_args()
    cal = json.loads((args.zoo / "calibration.json").read_text())[args.name]
    rows = {r["setting"]: r for r in cal["rows"]}
    label = args.setting or next(k for k in rows if k.startswith("recommended (reject auto"))
    row = rows[label]
    facts = load_general(BUILTIN)[: BUDGET.facts]
    prompts = prompts_from(args.zoo / f"{args.name}.heldout.jsonl", len(row["replies"]))
    port = free_port()
    env = dict(os.environ, NANOCOMMANDER_MODELS=str(args.zoo / ".serve-store"))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nanocommander",
            "serve",
            str(args.zoo / f"{args.name}.yaml"),
            "--host",
            f"127.0.0.1:{port}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(args.zoo / f"{args.name}.serve.log", "w"),
    )
    try:
        client = ollama.Client(host=f"http://127.0.0.1:{port}", timeout=600)
        for _ in range(120):
            try:
                client.list()
                break
            except Exception:
                time.sleep(1)
        model = f"zoo-{args.name}"
        options = {
            "temperature": 0,
            "repeat_penalty": 1.0,
            "num_predict": BUDGET.num_predict,
            "steer": args.steer,
        }
        t0 = time.monotonic()
        got = []
        for q in [q for q, _ in facts] + prompts:
            r = client.chat(model=model, messages=[{"role": "user", "content": q}], options=options)
            got.append(r.message.content)
        seconds = time.monotonic() - t0
    finally:
        server.terminate()
        server.wait(30)
    fact_replies, open_replies = got[: len(facts)], got[len(facts) :]
    right = sum(correct(text, answers) for text, (_, answers) in zip(fact_replies, facts, strict=True))
    same = sum(a == b for a, b in zip(open_replies, row["replies"], strict=True))
    rule = MARKERS[cal["spec"]["style"]]
    print(
        f"{args.name} via the server ({label}, steer {args.steer!r}): facts {right}/{len(facts)} "
        f"(calibrate {row['facts']}); open replies identical to calibrate's {same}/{len(open_replies)}; "
        f"marked {sum(marked(t, rule) for t in open_replies)}/{len(open_replies)} "
        f"(calibrate {row['marked']}); {seconds:.0f} s"
    )
    for a, b in zip(open_replies, row["replies"], strict=True):
        if a != b:
            print(f"  server:    {a[:100]!r}\n  calibrate: {b[:100]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
