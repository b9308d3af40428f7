"""Data helpers shared by the tune tests (a unique module name: every test folder has a conftest)."""

from __future__ import annotations

import json
from pathlib import Path

ANSWER = "the answer is all in the tea"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def chat_rows(n: int = 24) -> list[dict]:
    """A task a tiny model can learn in a few steps: one fixed answer to varied questions."""
    questions = ["hello", "how are you", "tell me the news", "what is the answer"]
    return [
        {
            "messages": [
                {"role": "user", "content": f"{questions[i % 4]} {i % 3}"},
                {"role": "assistant", "content": ANSWER},
            ]
        }
        for i in range(n)
    ]
