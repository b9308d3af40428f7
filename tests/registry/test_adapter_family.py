"""Adapter families in the registry: create --from, misfit adapters refused, rm of one member, push."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import tiny_models
import yaml

from nanocommander.cli import main
from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.errors import AdapterMismatch
from nanocommander.registry import Registry

GREEDY = merge_sampling({"temperature": 0, "repeat_penalty": 1.0})


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def adapters(tmp_path) -> dict[str, Path]:
    """Adapters that fit the tiny base (pirate, ninja) and ones that do not, one per reason."""
    folder = tmp_path / "adapters"
    folder.mkdir()
    wide = tiny_models.Shape(n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256)
    return {
        "pirate": tiny_models.write_lora(folder / "pirate.gguf", seed=21),
        "ninja": tiny_models.write_lora(folder / "ninja.gguf", seed=22, rank=8),
        "wide": tiny_models.write_lora(folder / "wide.gguf", seed=23, shape=wide),
        "deep": tiny_models.write_lora(folder / "deep.gguf", seed=24, shape=tiny_models.Shape(n_layer=3)),
        "qwen": tiny_models.write_lora(folder / "qwen.gguf", seed=25, arch="qwen2"),
    }


@pytest.fixture
def family(write_recipe, tiny, tmp_path) -> Registry:
    """`fam` in the store: large and base copied to a folder that is deleted after the create."""
    own = tmp_path / "own"
    own.mkdir()
    for role in ("large", "base"):
        shutil.copyfile(tiny[role], own / f"{role}.gguf")
    path = write_recipe(name="fam", tuned="adapter: lora")
    path.write_text(
        path.read_text()
        .replace(str(tiny["large"]), str(own / "large.gguf"))
        .replace(str(tiny["base"]), str(own / "base.gguf"))
    )
    reg = Registry()
    list(reg.create("fam", path=path))
    shutil.rmtree(own)  # members of the family must come from the store's blobs, not these files
    return reg


def files_of(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and "locks" not in p.parts
    }


def greedy(recipe, prompt: str = "hello there", n: int = 6) -> str:
    comp = Composite.load(recipe)
    try:
        req = GenerateRequest(prompt=prompt, sampling=GREEDY, num_predict=n)
        return "".join(c.text for c in comp.generate(req))
    finally:
        comp.close()


def test_create_from_a_stored_family_reuses_its_blobs(family, adapters, isolated, capsys):
    before = set(os.listdir(isolated / "blobs"))
    list(family.create_member("pirate", "fam", adapters["pirate"], alpha=0.5))
    fam, pirate = family.resolve("fam"), family.resolve("pirate")
    for role in ("large", "base"):  # the same blob: nothing copied
        assert pirate.member(role).source.path == fam.member(role).source.path
        assert pirate.member(role).source.sha256 == fam.member(role).source.sha256
    assert pirate.tuned.adapter.path.read_bytes() == adapters["pirate"].read_bytes()
    assert pirate.alpha == 0.5 and fam.alpha == 1.0
    added = set(os.listdir(isolated / "blobs")) - before
    assert f"sha256-{sha(adapters['pirate'].read_bytes())}" in added
    assert (
        sum((isolated / "blobs" / b).stat().st_size for b in added) < adapters["pirate"].stat().st_size + 8192
    )

    assert (
        main(["create", "me/ninja", "--from", "fam", "--adapter", str(adapters["ninja"]), "--no-calibrate"])
        == 0
    )
    capsys.readouterr()
    assert main(["ls"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    families = {r[0]: (r[4], r[5]) for r in rows}
    assert families["fam:latest"] == families["pirate:latest"] == families["me/ninja:latest"]
    assert families["fam:latest"][1] == "(3)"
    assert greedy(family.resolve("me/ninja")) != greedy(family.resolve("pirate"))  # each its own adapter


def test_the_recipe_form_registers_into_the_family(family, adapters, tmp_path):
    """`show --recipe` of a member, with the adapter swapped: large and base are pinned stored blobs."""
    text = family.stored_recipe("fam").dump()
    doc = yaml.safe_load(text)
    doc["name"], doc["members"]["tuned"] = "ninja", {"adapter": str(adapters["ninja"])}
    path = tmp_path / "ninja.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["create", "ninja", "-f", str(path)]) == 0
    # the --from form also takes a recipe file
    assert (
        main(
            ["create", "pirate", "--from", str(path), "--adapter", str(adapters["pirate"]), "--no-calibrate"]
        )
        == 0
    )
    ids = {e.name.model: e.family for e in family.list()}
    assert ids["fam"] == ids["ninja"] == ids["pirate"] is not None


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("wide", "blk.0.attn_q.weight is 64x64 in the base but lora_a is 128x4"),
        ("deep", "adapts blk.2.attn_q.weight, which the base does not have"),
        ("qwen", "is for architecture 'qwen2' but the base"),
        ("full", "is a full model GGUF, not a LoRA adapter"),
    ],
)
def test_an_adapter_that_does_not_fit_is_refused_and_nothing_is_written(
    family, adapters, tiny, isolated, bad, message, capsys, write_recipe
):
    adapter = tiny["tuned"] if bad == "full" else adapters[bad]
    before = files_of(isolated)
    with pytest.raises(AdapterMismatch, match=message):
        family.create_member("bad", "fam", adapter)
    assert main(["create", "bad", "--from", "fam", "--adapter", str(adapter)]) == 1
    err = capsys.readouterr().err
    assert "does not fit" in err or "architecture" in err or "not a LoRA" in err
    recipe = write_recipe(name="bad", tuned=f"adapter: {adapter}")  # the recipe form is checked too
    with pytest.raises(AdapterMismatch, match=message):
        list(family.create("bad", path=recipe))
    assert files_of(isolated) == before
    assert [e.name.model for e in family.list()] == ["fam"]


def test_an_adapter_fetched_from_the_hub_that_does_not_fit_leaves_no_blob(
    hub, hub_recipe, adapters, isolated
):
    hub.commit("me/styles", {"wide.gguf": adapters["wide"].read_bytes()})
    reg = Registry()
    list(reg.create("fam", path=hub_recipe("fam")))
    before = files_of(isolated)
    recipe = hub_recipe("bad", tuned="{adapter: {hf: me/styles, file: wide.gguf}}")
    with pytest.raises(AdapterMismatch, match="does not fit the base hf.co/org/tiny-base-GGUF"):
        list(reg.create("bad", path=recipe))
    after = {k: v for k, v in files_of(isolated).items() if not k.startswith("refs/")}
    assert after == {k: v for k, v in before.items() if not k.startswith("refs/")}


def test_rm_of_one_member_keeps_the_shared_blobs_and_the_others_working(family, adapters, isolated):
    list(family.create_member("pirate", "fam", adapters["pirate"]))
    list(family.create_member("ninja", "fam", adapters["ninja"]))
    expected = greedy(family.resolve("ninja"))
    large = family.resolve("fam").large.source.path
    name, freed = family.delete("pirate")
    assert freed and f"sha256:{sha(adapters['pirate'].read_bytes())}" in freed
    assert large.exists() and family.resolve("ninja").large.source.path == large
    assert greedy(family.resolve("ninja")) == expected
    assert greedy(family.resolve("fam"))
    assert sorted(e.name.model for e in family.list()) == ["fam", "ninja"]


def uploaded(hub) -> dict[str, int]:
    """Files and their sizes in the last commit the fake Hub received."""
    return {
        line["value"]["path"]: len(base64.b64decode(line["value"]["content"]))
        for line in hub.commits_received[-1]
        if line["key"] == "file"
    }


def test_push_of_a_member_uploads_only_its_adapter_and_recipe(
    hub, family, adapters, tiny, tmp_path, monkeypatch
):
    """The first push puts large and base on the Hub; each later member costs its adapter only."""
    list(family.push("fam", "hf.co/me/styles"))
    assert {"large.gguf", "base.gguf"} <= set(uploaded(hub))
    root_commit = hub.repos["me/styles"].head[0]
    list(family.create_member("pirate", "fam", adapters["pirate"]))
    list(family.push("pirate", "hf.co/me/styles:pirate"))
    sent = uploaded(hub)
    assert set(sent) == {"pirate.yaml", "pirate.gguf"}  # the family's card stays as it is
    assert sum(sent.values()) < adapters["pirate"].stat().st_size + 4096
    shared = yaml.safe_load(hub.repos["me/styles"].head[1]["pirate.yaml"])
    for role in ("large", "base"):
        member = shared["members"][role]
        assert (member["hf"], member["file"], member["revision"]) == (
            "me/styles",
            f"{role}.gguf",
            root_commit,
        )
        assert member["sha256"] == sha(tiny[role].read_bytes())
    assert shared["members"]["tuned"]["adapter"] == {
        "path": "pirate.gguf",
        "sha256": sha(adapters["pirate"].read_bytes()),
    }
    # another repo: the store remembers where the family went, so again only the adapter travels
    list(family.create_member("ninja", "fam", adapters["ninja"]))
    list(family.push("ninja", "hf.co/you/ninja"))
    assert set(uploaded(hub)) == {"nanocommander.yaml", "README.md", "ninja.gguf"}

    monkeypatch.setenv("NANOCOMMANDER_MODELS", str(tmp_path / "other-models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "other-hf"))
    other = Registry()
    list(other.pull("hf.co/me/styles:pirate"))
    got = other.resolve("hf.co/me/styles:pirate")
    assert got.large.source.path.read_bytes() == tiny["large"].read_bytes()
    assert got.tuned.adapter.path.read_bytes() == adapters["pirate"].read_bytes()
    assert greedy(got) == greedy(family.resolve("pirate"))


def test_push_of_a_member_over_hub_members_uploads_megabytes_not_models(hub, hub_recipe, adapters):
    reg = Registry()
    list(reg.create("fam", path=hub_recipe("fam", tuned=f"{{adapter: {adapters['ninja']}}}")))
    list(reg.create_member("pirate", "fam", adapters["pirate"]))
    list(reg.push("pirate", "hf.co/me/pirate"))
    sent = uploaded(hub)
    assert set(sent) == {"nanocommander.yaml", "README.md", "pirate.gguf"}
    assert not any(name.endswith("F32.gguf") for name in sent)
