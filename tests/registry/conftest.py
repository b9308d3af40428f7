"""Registry test fixtures: an isolated store, HF cache and Ollama store per test, and a fake Hub.

huggingface_hub freezes env vars into constants at import; the registry reads them at
call time and passes endpoint/token/cache_dir explicitly, so setting the environment
here is enough. HF_ENDPOINT points at a closed port unless a test asks for `hub`, so
nothing can reach the internet by accident.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hub_server import FakeHub  # noqa: E402


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    """NANOCOMMANDER_MODELS, HF_HOME and OLLAMA_MODELS inside tmp_path; returns the models dir."""
    models = tmp_path / "models"
    monkeypatch.setenv("NANOCOMMANDER_MODELS", str(models))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return models


@pytest.fixture
def hub(monkeypatch):
    """A fresh fake Hub for this test, with HF_ENDPOINT pointing at it."""
    server = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.stop()


@pytest.fixture
def published(hub, tiny) -> dict[str, tuple[str, str, bytes]]:
    """The tiny models on the fake Hub: role -> (repo, file, bytes)."""
    out = {}
    for role, repo, file in (
        ("large", "org/tiny-large-GGUF", "tiny-large-F32.gguf"),
        ("base", "org/tiny-base-GGUF", "tiny-base-F32.gguf"),
        ("tuned", "org/tiny-tuned-GGUF", "tiny-tuned-F32.gguf"),
    ):
        data = tiny[role].read_bytes()
        hub.commit(repo, {file: data, "README.md": f"# {role}\n".encode()})
        out[role] = (repo, file, data)
    return out


@pytest.fixture
def hub_recipe(tmp_path, published):
    """Write a recipe whose members are on the fake Hub; `tuned` may be replaced (e.g. an adapter)."""

    def write(name: str = "tiny", *, tuned: str | None = None, extra: str = "") -> Path:
        (lr, lf, _), (br, bf, _), (tr, tf, _) = published["large"], published["base"], published["tuned"]
        tuned = tuned or f"{{hf: {tr}, file: {tf}}}"
        text = (
            f"name: {name}\nmembers:\n  large: {{hf: {lr}, file: {lf}}}\n  base: {{hf: {br}, file: {bf}}}\n"
            f"  tuned: {tuned}\nalpha: 0.5\nparameters: {{temperature: 0.2, num_ctx: 512}}\n{extra}"
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return path

    return write
