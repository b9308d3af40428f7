"""The long fuzz run: tests/backend/test_fuzz.py's properties with many more random examples.

    python bench/fuzz.py                 # 2000 examples per protocol, a fresh random seed each run
    python bench/fuzz.py --examples 20000 --protocol kobold

The CI profile (pytest's default) is deterministic and bounded to about a minute; this one
draws new inputs every run. A failure prints the request, the reply and a minimal example.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=2000, help="examples per protocol")
    parser.add_argument("--protocol", choices=["ollama", "openai", "kobold"], help="only this protocol")
    parser.add_argument("--log", help="append every request sent to this file (to find a crash)")
    args = parser.parse_args()
    env = {**os.environ, "FUZZ_PROFILE": "long", "FUZZ_EXAMPLES": str(args.examples)}
    if args.log:
        env["FUZZ_LOG"] = args.log
    select = f"no_input and {args.protocol}" if args.protocol else "no_input"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/backend/test_fuzz.py",
        "-k",
        select,
        "-q",
        "--tb=short",
        "-W",
        "ignore",
        "-p",
        "no:cacheprovider",
        "--timeout=0",
    ]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
