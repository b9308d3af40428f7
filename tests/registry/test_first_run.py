"""A new user's first run of the default recipe (issue 23, item 1): it is pinned to repositories on
record, and when the Hub cannot serve it the one-line error says which repository and file, and what
to do next. A local fake Hub (hub_server.py) or a closed port stands in for the network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nanocommander.cli import main
from nanocommander.engine.request.recipe import Recipe
from nanocommander.errors import DigestMismatch, RegistryError
from nanocommander.registry import Registry

DEFAULT = Path(__file__).resolve().parents[2] / "modelfiles" / "default.yaml"
PINNED = {  # the record of the Hub's file pages ("Git LFS Details")
    "large": (
        "QuantFactory/Qwen2.5-1.5B-GGUF",
        "Qwen2.5-1.5B.Q4_K_M.gguf",
        "f427c0cc81e4df2d0bb01a80e46057bfea6678bf",
        "494e45ba0a8bd0217f0c1ac58e2779f3c5f53888649996b5f7fd837de84f96be",
    ),
    "base": (
        "QuantFactory/Qwen2.5-0.5B-GGUF",
        "Qwen2.5-0.5B.Q8_0.gguf",
        "71b08db7d287806a33820e4c483f59a03f59e97e",
        "f8ff0bcbf1899d4b98278fd28dfb2e5a06f3cbb6176f86538809057184bafa88",
    ),
    "tuned": (
        "QuantFactory/Qwen2.5-0.5B-Instruct-GGUF",
        "Qwen2.5-0.5B-Instruct.Q8_0.gguf",
        "42924aee932f4512df485de35b83e826b2e718d8",
        "37d9929478ae8f6937fb79f3a5a6e813f157f7a0ee7d58797b58314d208e8ce7",
    ),
}


def test_default_recipe_pins_repo_file_revision_and_sha256_on_every_member():
    recipe = Recipe.load(DEFAULT)
    for spec in recipe.members:
        src = spec.source
        assert (src.hf, src.file, src.revision, src.sha256) == PINNED[spec.role]
        assert re.fullmatch(r"[0-9a-f]{40}", src.revision) and re.fullmatch(r"[0-9a-f]{64}", src.sha256)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


@pytest.mark.parametrize("verb", ["pull", "serve"])
def test_no_network_says_so_in_one_line(verb, capsys):
    """HF_ENDPOINT is a closed port (conftest): `pull` and `serve` of the default recipe fail in one line."""
    assert main([verb, str(DEFAULT)]) == 1
    line = _one_error_line(capsys)
    assert line.startswith("Error: no network: cannot reach the Hub at http://127.0.0.1:9")
    assert "QuantFactory/Qwen2.5-1.5B-GGUF" in line and "HF_HUB_OFFLINE=1" in line


def test_a_missing_repository_names_it_and_the_file_and_suggests_another_recipe(hub, capsys):
    assert main(["pull", str(DEFAULT)]) == 1
    line = _one_error_line(capsys)
    assert "repository not found on the Hub: QuantFactory/Qwen2.5-1.5B-GGUF" in line
    assert "Qwen2.5-1.5B.Q4_K_M.gguf" in line and "`nanocommander pull OTHER.yaml`" in line


def _pin(hub, role: str, files: dict[str, bytes]) -> None:
    """Put `files` in the fake Hub's repo of `role` at the default recipe's pinned commit."""
    repo, _, revision, _ = PINNED[role]
    hub.commit(repo, files)
    hub.repos[repo].commits.append((revision, dict(files)))


def test_a_missing_file_or_revision_names_repo_and_file(hub):
    _pin(hub, "large", {"README.md": b"# renamed its files\n"})
    with pytest.raises(RegistryError) as missing_file:
        list(Registry().pull(DEFAULT))
    message = str(missing_file.value)
    assert "file not found on the Hub: Qwen2.5-1.5B.Q4_K_M.gguf in QuantFactory/Qwen2.5-1.5B-GGUF" in message
    assert "f427c0cc81e4df2d0bb01a80e46057bfea6678bf" in message and "nanocommander pull" in message
    assert "\n" not in message

    hub.repos["QuantFactory/Qwen2.5-1.5B-GGUF"].commits.pop()  # the pinned commit is gone (history rewritten)
    with pytest.raises(
        RegistryError, match="revision not found on the Hub: f427c0cc.* of QuantFactory/Qwen2.5-1.5B"
    ):
        list(Registry().pull(DEFAULT))


def test_a_file_whose_bytes_changed_is_refused_before_downloading(hub):
    """The Hub's ETag (the LFS sha256) is checked against the pin before any byte is fetched."""
    _pin(hub, "large", {"Qwen2.5-1.5B.Q4_K_M.gguf": b"GGUF not the pinned bytes"})
    with pytest.raises(DigestMismatch, match="Qwen2.5-1.5B.Q4_K_M.gguf"):
        list(Registry().pull(DEFAULT))
    assert hub.gets == [] and hub.heads == ["Qwen2.5-1.5B.Q4_K_M.gguf"]
