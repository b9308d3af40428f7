"""The one digest rule: a blob is named by its sha256, `sha256:<64 hex>` (or `sha256-<64 hex>`, the
blob file's name). Either case is accepted and lower-cased, so one blob never has two names; a
digest is checked before it becomes part of a path (after ollama's BlobsPath)."""

from __future__ import annotations

import re

HEX = re.compile(r"[0-9a-fA-F]{64}")
_NAMED = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


def hex_of(digest: str | None, *, bare: bool = False) -> str | None:
    """The lower-case 64 hex digits of `sha256:<hex>` / `sha256-<hex>` (also of `<hex>` alone when
    `bare`), or None for anything else."""
    text = (digest or "").strip()
    match = _NAMED.fullmatch(text) or (HEX.fullmatch(text) if bare else None)
    if not match:
        return None
    return (match.group(1) if match.re is _NAMED else match.group(0)).lower()
