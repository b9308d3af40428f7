"""Errors of the tune and eval commands, inside the project's one hierarchy.

They live here because tune/ is an optional extra; the CLI catches them as
NanoCommanderError like every other area's errors.
"""

from __future__ import annotations

from nanocommander.errors import NanoCommanderError


class DataError(NanoCommanderError, ValueError):
    """A training or eval file is unreadable or has malformed records; the message names lines."""


class TrainingError(NanoCommanderError, RuntimeError):
    """Training cannot start or was stopped (diverging loss, unsupported model)."""


class ExportError(NanoCommanderError, RuntimeError):
    """The adapter cannot be written as a llama.cpp LoRA GGUF, or its self-check failed."""


class MissingExtra(NanoCommanderError, ImportError):
    """torch/transformers/peft are not installed; says how to install them."""

    def __init__(self, missing: str):
        super().__init__(f"`{missing}` is not installed; run: pip install 'nanocommander[tune]'")
