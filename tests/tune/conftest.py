"""Fixtures for tune tests: JSONL writers, GGUF twins of tiny torch models, a trained adapter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # twins.py

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


@pytest.fixture
def jsonl(tmp_path):
    def write(rows: list, name: str = "data.jsonl") -> Path:
        return write_jsonl(tmp_path / name, rows)

    return write


@pytest.fixture(scope="session")
def twin(tmp_path_factory):
    """Build (once per kind) a tiny torch model and its GGUF twin: twin('llama') -> (model, path)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import twins

    made: dict[str, tuple] = {}

    def get(kind: str):
        if kind not in made:
            model = twins.make_model(kind)
            path = twins.write_gguf(model, tmp_path_factory.mktemp(kind) / f"{kind}.gguf")
            made[kind] = (model, path)
        return made[kind]

    return get
