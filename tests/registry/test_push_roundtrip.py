"""push, then pull hf.co/...: a recipe with a local adapter round-trips; Hub members are only referenced."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from nanocommander.errors import InvalidName, ModelNotFound
from nanocommander.registry import Registry


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_push_then_pull_round_trips_a_recipe_with_a_local_adapter(
    hub, published, hub_recipe, tiny, tmp_path, monkeypatch
):
    reg = Registry()
    recipe_path = hub_recipe(
        "pirate",
        tuned=f"{{adapter: {tiny['lora']}, adapter_scale: 0.8}}",
        extra="system: You are a pirate.\nlicense: apache-2.0\n",
    )
    list(reg.create("me/pirate", path=recipe_path))
    events = list(reg.push("me/pirate", "hf.co/me/pirate-composite"))
    assert events[0] == {"status": "retrieving manifest"} and events[-1] == {"status": "success"}
    lora = tiny["lora"].read_bytes()
    assert any(e.get("digest") == f"sha256:{sha(lora)}" and e.get("completed") == len(lora) for e in events)

    sha_commit, files = hub.repos["me/pirate-composite"].head
    assert set(files) == {".gitattributes", "nanocommander.yaml", "lora.gguf", "README.md"}
    assert files["lora.gguf"] == lora  # the local adapter was uploaded...
    uploaded = [line["value"]["path"] for line in hub.commits_received[-1] if line["key"] == "file"]
    assert sorted(uploaded) == ["README.md", "lora.gguf", "nanocommander.yaml"]  # ...the Hub members were not
    card = files["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert "nanocommander" in front["tags"] and front["license"] == "apache-2.0"
    assert front["base_model"] == [published["large"][0], published["base"][0], published["tuned"][0]][:2]
    shared = yaml.safe_load(files["nanocommander.yaml"])
    assert shared["members"]["tuned"]["adapter"] == {"path": "lora.gguf", "sha256": sha(lora)}
    assert shared["members"]["large"]["hf"] == published["large"][0]
    assert shared["members"]["large"]["revision"] == hub.repos[published["large"][0]].head[0]

    # a fresh machine: empty store, empty HF cache
    monkeypatch.setenv("NANOCOMMANDER_MODELS", str(tmp_path / "other-models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "other-hf"))
    hub.reset_counters()
    other = Registry()
    list(other.pull("hf.co/me/pirate-composite"))
    got = other.resolve("hf.co/me/pirate-composite")
    assert got.name == "hf.co/me/pirate-composite:latest"
    assert got.alpha == 0.5 and got.system == "You are a pirate." and got.parameters["num_ctx"] == 512
    assert got.tuned.adapter_scale == 0.8 and got.tuned.source is None
    assert got.tuned.adapter.path.read_bytes() == lora
    assert (got.tuned.adapter.hf, got.tuned.adapter.file, got.tuned.adapter.revision) == (
        "me/pirate-composite",
        "lora.gguf",
        sha_commit,
    )
    for role in ("large", "base"):
        assert got.member(role).source.path.read_bytes() == published[role][2]
    assert hub.served["lora.gguf"] == len(lora)


def test_push_with_a_tag_adds_a_second_recipe(hub, published, hub_recipe, write_recipe, tiny):
    reg = Registry()
    list(reg.create("hubby", path=hub_recipe("hubby")))
    list(reg.create("local-one", path=write_recipe(name="local-one", alpha=2.0)))
    list(reg.push("hubby", "hf.co/me/set"))
    list(reg.push("local-one", "hf.co/me/set:strong"))
    files = hub.repos["me/set"].head[1]
    assert {"nanocommander.yaml", "strong.yaml"} <= set(files)
    # local-one's files have the bytes of hubby's Hub members: the push references them, uploads none
    assert not {"large.gguf", "base.gguf", "tuned.gguf"} & set(files)
    strong = yaml.safe_load(files["strong.yaml"])
    assert strong["members"]["large"]["hf"] == "org/tiny-large-GGUF"
    reg.delete("local-one")
    list(reg.pull("hf.co/me/set:strong"))
    assert reg.resolve("hf.co/me/set:strong").alpha == 2.0
    assert reg.resolve("hf.co/me/set:strong").large.source.path.read_bytes() == tiny["large"].read_bytes()
    with pytest.raises(Exception, match="available tags: nanocommander, strong"):
        list(reg.pull("hf.co/me/set:nope"))


def test_push_refuses_bad_targets_and_unknown_models(hub):
    reg = Registry()
    with pytest.raises(InvalidName, match="hf.co/user/repo"):
        reg.push("tiny", "me/not-a-hub-repo")
    with pytest.raises(ModelNotFound):
        reg.push("tiny", "hf.co/me/x")
    assert hub.repos == {}


def test_push_leaves_this_machines_rpc_placement_out_of_the_shared_recipe(hub, published, hub_recipe, tiny):
    reg = Registry()
    path = hub_recipe("placed", tuned=f"{{adapter: {tiny['lora']}}}")
    lr, lf, _ = published["large"]
    placed = f"large: {{hf: {lr}, file: {lf}, rpc: ['10.0.0.5:50052'], tensor_split: [1]}}"
    path.write_text(path.read_text().replace(f"large: {{hf: {lr}, file: {lf}}}", placed))
    list(reg.create("me/placed", path=path))
    assert reg.resolve("me/placed").member("large").rpc == ("10.0.0.5:50052",)  # kept locally...
    list(reg.push("me/placed", "hf.co/me/placed"))
    _, files = hub.repos["me/placed"].head
    shared = yaml.safe_load(files["nanocommander.yaml"])
    assert (
        "rpc" not in shared["members"]["large"] and "tensor_split" not in shared["members"]["large"]
    )  # ...not shared
    assert b"10.0.0.5" not in files["nanocommander.yaml"]
