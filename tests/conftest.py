"""Shared fixtures: tiny generated GGUF models (built once per test session) and recipes over them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: on a shared 2-core machine a property test's timing says nothing about
# its property (test_names failed DeadlineExceeded under load); the pytest timeout still bounds a run.
settings.register_profile("shared-machine", deadline=None)
settings.load_profile("shared-machine")

sys.path.insert(0, str(Path(__file__).parent))  # make tests/tiny_models.py importable everywhere

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Paths of the standard tiny models: large, base, tuned, padded, foreign and lora (for base)."""
    return tiny_models.write_set(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def write_recipe(tmp_path, tiny):
    """Write a recipe YAML over the tiny models; keyword arguments override its parts."""

    def write(
        text: str | None = None,
        *,
        name: str = "tiny",
        large: str = "large",
        base: str = "base",
        tuned: str = "path: tuned",
        alpha: float = 1.0,
        extra: str = "",
    ) -> Path:
        if text is None:
            tuned_line = tuned.replace("tuned", str(tiny["tuned"])) if tuned == "path: tuned" else tuned
            tuned_line = tuned_line.replace("adapter: lora", f"adapter: {tiny['lora']}")
            text = (
                f"name: {name}\nmembers:\n  large: {{path: {tiny[large]}}}\n  base: {{path: {tiny[base]}}}\n"
                f"  tuned: {{{tuned_line}}}\nalpha: {alpha}\n{extra}"
            )
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return path

    return write
