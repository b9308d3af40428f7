"""Ollama-store members, verify, cancelling a pull, and the CLI verbs end to end."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from nanocommander.cli import main
from nanocommander.errors import RegistryError
from nanocommander.registry import Registry


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ollama_model(root, name: str, gguf) -> str:
    """Lay out a model the way Ollama stores it: a manifest plus a sha256-named blob."""
    data = gguf.read_bytes()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gguf, root / "blobs" / f"sha256-{sha(data)}")
    model, tag = name.split(":")
    manifest = {
        "schemaVersion": 2,
        "config": {"digest": "sha256:" + "0" * 64, "size": 2},
        "layers": [
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": f"sha256:{sha(data)}",
                "size": len(data),
            }
        ],
    }
    path = root / "manifests" / "registry.ollama.ai" / "library" / model / tag
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    return sha(data)


def test_ollama_member_is_linked_from_the_ollama_store(tiny, write_recipe, tmp_path):
    digest = ollama_model(tmp_path / "ollama", "tinyllama:1b", tiny["large"])
    reg = Registry()
    path = write_recipe(name="olla")
    path.write_text(path.read_text().replace(f"{{path: {tiny['large']}}}", "{ollama: 'TinyLlama:1b'}"))
    list(reg.pull(path))
    recipe = reg.resolve("olla")
    blob = tmp_path / "ollama" / "blobs" / f"sha256-{digest}"
    assert recipe.large.source.ollama == "TinyLlama:1b" and recipe.large.source.sha256 == digest
    assert os.stat(recipe.large.source.path).st_ino == os.stat(blob).st_ino  # linked, not copied
    path.write_text(path.read_text().replace("TinyLlama:1b", "nope:1b"))
    with pytest.raises(RegistryError, match="ollama model 'nope:1b' not found"):
        list(reg.pull(path))


def test_verify_finds_and_fixes_a_corrupt_blob(write_recipe, tiny, isolated):
    reg = Registry()
    list(reg.pull(write_recipe(name="tiny")))
    assert reg.verify().corrupt == []
    blob = reg.resolve("tiny").tuned.source.path
    blob.unlink()  # it is a hardlink to the fixture: replace it, never write into it
    blob.write_bytes(b"GGUF but not really")
    report = reg.verify()
    assert [d for d, _ in report.corrupt] == [f"sha256:{blob.name[7:]}"] and report.affected == [
        "tiny:latest"
    ]
    assert blob.exists()
    fixed = reg.verify(fix=True)
    assert fixed.removed == [f"sha256:{blob.name[7:]}"] and not blob.exists()
    with pytest.raises(RegistryError, match="nanocommander pull tiny:latest"):
        reg.resolve("tiny")
    list(reg.pull("tiny"))  # the stored recipe still names the local file: it is imported again
    assert reg.resolve("tiny").tuned.source.path.read_bytes() == tiny["tuned"].read_bytes()
    assert reg.verify().corrupt == []


def test_closing_a_pull_early_cancels_and_keeps_the_partial(hub, published, hub_recipe, isolated):
    hub.chunk_delay = 0.02
    events = Registry().pull(hub_recipe("tiny"))
    for event in events:
        if event.get("completed", 0) > 40_000 and "digest" in event:
            break
    events.close()  # what the server does when a client disconnects
    partial = list((isolated / "partial").iterdir())
    assert len(partial) == 1 and 40_000 < partial[0].stat().st_size < len(published["large"][2])
    assert Registry().list() == []
    size = partial[0].stat().st_size
    assert Registry().verify(fix=True).partials == size
    assert list((isolated / "partial").iterdir()) == []


def test_cli_verbs(write_recipe, tiny, capsys):
    path = write_recipe(name="tiny", tuned="adapter: lora")
    assert main(["pull", str(path)]) == 0
    err = capsys.readouterr().err
    assert "pulling manifest" in err and "success" in err
    assert main(["create", "me/second:v2", "-f", str(path)]) == 0
    capsys.readouterr()
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "ID", "SIZE", "FAMILY", "MODIFIED"]
    assert "tiny:latest" in out and "me/second:v2" in out
    families = {line.split()[0]: line.split()[4] for line in out.splitlines()[1:]}
    assert families["tiny:latest"] == families["me/second:v2"] != "-"  # same large, base; an adapter
    assert main(["show", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "llama" in out and "adapter" in out and "Memory estimate" in out and "F32" in out
    assert main(["show", "tiny", "--recipe"]) == 0
    assert "sha256:" in capsys.readouterr().out
    assert main(["cp", "tiny", "tiny2"]) == 0
    assert main(["rm", "tiny", "tiny2"]) == 0
    assert "deleted 'tiny2:latest'" in capsys.readouterr().out
    assert main(["show", "tiny"]) == 1
    assert "model 'tiny:latest' not found, try pulling it first" in capsys.readouterr().err
    assert main(["rm", "../etc"]) == 1
    assert "invalid model name" in capsys.readouterr().err
    assert main(["verify"]) == 0
    assert "checked" in capsys.readouterr().out
