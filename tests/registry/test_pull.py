"""Pulling recipes from the fake Hub: each member once, sharing, list/show/cp/rm, resolve, events."""

from __future__ import annotations

import hashlib
import os

import pytest

from nanocommander.errors import ModelNotFound, RegistryError
from nanocommander.registry import Registry, read_gguf


def blobs(models) -> set[str]:
    return {p.name for p in (models / "blobs").iterdir() if p.name.startswith("sha256-")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_pull_fetches_each_member_once_and_shares_blobs(hub, published, hub_recipe, tiny, isolated):
    reg = Registry()
    events = list(reg.pull(hub_recipe("tiny")))
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    assert {"status": "verifying sha256 digest"} in events and {"status": "writing manifest"} in events
    for role in ("large", "base", "tuned"):
        _, file, data = published[role]
        assert hub.served[file] == len(data)  # each file sent exactly once
        assert [g for g in hub.gets if g[0] == file] == [(file, None)]
        digest = f"sha256:{sha(data)}"
        ends = [e for e in events if e.get("digest") == digest]
        assert ends[-1]["status"] == f"pulling {sha(data)[:12]}"
        assert ends[-1]["completed"] == ends[-1]["total"] == len(data)
    first = blobs(isolated)

    # a second recipe sharing large and base, with a local adapter as tuned: nothing new downloaded
    hub.reset_counters()
    list(reg.pull(hub_recipe("pirate", tuned=f"{{adapter: {tiny['lora']}}}")))
    assert dict(hub.served) == {}
    assert blobs(isolated) - first  # only the adapter and the small layers are new
    assert f"sha256-{sha(tiny['lora'].read_bytes())}" in blobs(isolated)

    names = [e.name.display() for e in reg.list()]
    assert sorted(names) == ["pirate:latest", "tiny:latest"]
    entry = next(e for e in reg.list() if e.name.display() == "tiny:latest")
    assert entry.details["family"] == "llama" and entry.details["quantization_level"] == "F32"
    assert entry.size > sum(len(published[r][2]) for r in ("large", "base", "tuned"))
    assert entry.to_ollama()["name"] == "tiny:latest"

    # cp, then rm keeps what other models use
    reg.copy("tiny", "tiny-copy:v1")
    assert reg.resolve("TINY-COPY:V1").tuned.source.path == reg.resolve("tiny").tuned.source.path
    before = blobs(isolated)
    name, freed = reg.delete("tiny")
    assert name.display() == "tiny:latest" and freed == [] and blobs(isolated) == before
    _, freed = reg.delete("tiny-copy:v1")
    tuned_blob = f"sha256:{sha(published['tuned'][2])}"
    assert tuned_blob in freed  # pirate uses large/base/adapter but not the tuned GGUF
    left = blobs(isolated)
    for role in ("large", "base"):
        assert f"sha256-{sha(published[role][2])}" in left
    reg.delete("pirate")
    assert blobs(isolated) == set()
    assert reg.list() == []
    with pytest.raises(ModelNotFound, match="model 'tiny:latest' not found, try pulling it first"):
        reg.show("tiny")


def test_resolve_points_at_blobs_and_keeps_hub_info(hub, published, hub_recipe, isolated):
    reg = Registry()
    list(reg.pull(hub_recipe("tiny")))
    recipe = reg.resolve("tiny")
    assert recipe.name == "tiny:latest" and recipe.alpha == 0.5
    assert recipe.parameters["temperature"] == 0.2
    for role in ("large", "base", "tuned"):
        repo, file, data = published[role]
        src = recipe.member(role).source
        assert src.path.parent == isolated / "blobs" and src.path.read_bytes() == data
        assert (src.hf, src.file, src.sha256) == (repo, file, sha(data))
        assert src.revision == hub.repos[repo].head[0]  # pinned to the commit pulled
    stored = reg.stored_recipe("tiny")
    assert stored.large.source.path is None and stored.large.source.revision == recipe.large.source.revision


def test_pinned_recipe_pulls_again_without_network(hub, published, hub_recipe, monkeypatch):
    reg = Registry()
    list(reg.pull(hub_recipe("tiny")))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the Hub is gone
    events = list(reg.pull("tiny"))  # refreshing a stored model: sha256 pinned, blobs present
    assert events[-1] == {"status": "success"}


def test_show_reports_members_and_memory(hub, published, hub_recipe, tiny):
    reg = Registry()
    list(reg.pull(hub_recipe("pirate", tuned=f"{{adapter: {tiny['lora']}}}", extra="system: Arr.\n")))
    d = reg.show("pirate")
    kinds = {(m.role, m.kind) for m in d.members}
    assert kinds == {("large", "model"), ("base", "model"), ("tuned", "adapter")}
    large = next(m for m in d.members if m.role == "large").info
    info = read_gguf(tiny["large"])
    assert (large.architecture, large.quantization, large.context_length) == ("llama", "F32", 2048)
    assert large.parameters == info.parameters > 0 and large.size == tiny["large"].stat().st_size
    assert d.system == "Arr." and "im_start" in d.template  # the base's chat template (tuned is an adapter)
    mem = d.memory
    # num_ctx 512 from the recipe for each of the 4 default slots; large: 3 layers, 2 kv heads of 32 dims
    assert mem.members["large"].kv_cache == 2 * 3 * 512 * 2 * 32 * 2 * 4
    assert mem.members["large"].num_parallel == 4
    assert mem.members["large"].weights == tiny["large"].stat().st_size
    assert mem.members["tuned"].weights == tiny["lora"].stat().st_size  # shares the base's weights
    assert mem.total == sum(m.total for m in mem.members.values())
    assert (
        reg.estimate("pirate", num_ctx=1024, num_parallel=1).members["base"].kv_cache
        == 2 * 2 * 1024 * 2 * 16 * 2
    )
    out = d.to_dict()
    assert out["alpha"] == 0.5 and len(out["members"]) == 3 and out["memory"]["fits"] in (True, False)


def test_quant_tag_picks_the_matching_gguf(hub, published, tiny, tmp_path):
    hub.commit(
        "org/multi-GGUF",
        {"m-Q8_0.gguf": tiny["padded"].read_bytes(), "m-F32.gguf": tiny["base"].read_bytes()},
    )
    (lr, lf, _), (tr, tf, _) = published["large"], published["tuned"]
    path = tmp_path / "q.yaml"
    path.write_text(
        f"name: q\nmembers:\n  large: {{hf: {lr}, file: {lf}}}\n  base: {{hf: hf.co/org/multi-GGUF:f32}}\n"
        f"  tuned: {{hf: {tr}, file: {tf}}}\n"
    )
    reg = Registry()
    list(reg.pull(path))
    src = reg.resolve("q").base.source
    assert src.file == "m-F32.gguf" and src.path.read_bytes() == tiny["base"].read_bytes()
    path.write_text(path.read_text().replace(":f32", ":Q2_K"))
    with pytest.raises(RegistryError, match="no GGUF for tag 'Q2_K'; available: F32, Q8_0"):
        list(reg.pull(path))


def test_hf_cache_file_is_linked_not_downloaded(hub, published, hub_recipe, tmp_path):
    from huggingface_hub import hf_hub_download

    repo, file, data = published["large"]
    cached = hf_hub_download(repo, file, cache_dir=tmp_path / "hf" / "hub", endpoint=hub.url, token=False)
    hub.reset_counters()
    reg = Registry()
    list(reg.pull(hub_recipe("tiny")))
    assert hub.served[file] == 0
    blob = reg.resolve("tiny").large.source.path
    assert os.stat(blob).st_ino == os.stat(os.path.realpath(cached)).st_ino  # no second copy on disk


def test_offline_uses_the_hf_cache_only(hub, published, hub_recipe, tmp_path, monkeypatch):
    from huggingface_hub import hf_hub_download

    for role in ("large", "base"):
        repo, file, _ = published[role]
        hf_hub_download(repo, file, cache_dir=tmp_path / "hf" / "hub", endpoint=hub.url, token=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.reset_counters()
    reg = Registry()
    with pytest.raises(RegistryError, match="HF_HUB_OFFLINE"):
        list(reg.pull(hub_recipe("tiny")))  # tuned is not cached
    assert hub.heads == [] and hub.gets == []
    assert reg.list() == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    list(reg.pull(hub_recipe("tiny")))
    assert hub.served[published["large"][1]] == 0 and hub.served[published["tuned"][1]] > 0


def test_local_members_are_hardlinked_into_the_store(write_recipe, tiny):
    reg = Registry()
    list(reg.create("local/tiny:v1", path=write_recipe(name="tiny")))
    recipe = reg.resolve("local/tiny:v1")
    for role in ("large", "base", "tuned"):
        assert os.stat(recipe.member(role).source.path).st_ino == os.stat(tiny[role]).st_ino
    assert recipe.large.source.sha256 == sha(tiny["large"].read_bytes())


def test_unknown_and_non_recipe_refs_are_clear_errors(hub):
    reg = Registry()
    with pytest.raises(RegistryError, match="neither a recipe file"):
        reg.pull("nothing-here")
    hub.commit("org/plain-GGUF", {"x-Q4_K_M.gguf": b"GGUF"})
    with pytest.raises(RegistryError, match="has no nanocommander recipe"):
        list(reg.pull("hf.co/org/plain-GGUF"))
    with pytest.raises(RegistryError, match="repository not found"):
        list(reg.pull("hf.co/org/missing"))
