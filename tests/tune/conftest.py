"""Fixtures for tune tests: JSONL writers, GGUF twins of tiny torch models, a trained adapter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # twins.py, tune_helpers.py

from tune_helpers import write_jsonl  # noqa: E402


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
