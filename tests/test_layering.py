"""The layering rule of docs/architecture.md, checked on the source: imports go down the layers only.

    nanocommander.errors, .units, .digest, .gguf_file  <-  engine  <-  registry  <-  backend, tune  <-  cli

Every import counts, function-local ones included, so a cycle cannot hide inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "engine": "engine",
    "registry": "registry",
    "backend": "backend",
    "tune": "tune",
    "plugins": "plugins",
}
RANK = {"base": 0, "engine": 1, "registry": 2, "backend": 3, "tune": 3, "plugins": 3, "cli": 4}


def layer_of_module(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] != "nanocommander":
        return None
    if len(parts) == 1 or parts[1] in ("errors", "units", "digest", "gguf_file"):
        return "base"
    if parts[1] == "cli":
        return "cli"
    return parts[1] if parts[1] in PACKAGES else "base"


def sources() -> list[tuple[str, Path]]:
    out = [(layer, p) for layer, d in PACKAGES.items() for p in (ROOT / d).rglob("*.py")]
    out += [("cli", p) for p in (ROOT / "nanocommander" / "cli").rglob("*.py")]
    out += [
        ("base", ROOT / "nanocommander" / n) for n in ("errors.py", "units.py", "digest.py", "gguf_file.py")
    ]
    return out


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return found


def test_imports_go_down_the_layers_only():
    wrong = []
    for layer, path in sources():
        if "open_webui" in path.parts:  # runs inside Open WebUI, imports nothing of ours
            continue
        for name in imports(path):
            target = layer_of_module(name)
            if target is None or target == layer:
                continue
            same_rank = RANK[target] == RANK[layer]
            if RANK[target] > RANK[layer] or same_rank:
                wrong.append(f"{path.relative_to(ROOT)} ({layer}) imports {name} ({target})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_engine_imports_neither_backend_nor_registry():
    for _, path in [s for s in sources() if s[0] == "engine"]:
        for name in imports(path):
            assert not name.startswith(("nanocommander.backend", "nanocommander.registry")), (path, name)


def test_protocol_folders_do_not_import_each_others_routes():
    """Each protocol's routes stand alone: what two protocols share lives in backend/ (prepare, generations)."""
    protocols = ("ollama", "openai", "kobold")
    wrong = []
    for proto in protocols:
        for path in (ROOT / "backend" / proto).rglob("*.py"):
            for name in imports(path):
                for other in protocols:
                    if other != proto and name.startswith(f"nanocommander.backend.{other}.routes"):
                        wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(sorted(set(wrong)))
