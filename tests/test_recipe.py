"""Recipe parsing: valid files load and round-trip; broken ones name file, line and key."""

from __future__ import annotations

import pytest

from nanocommander.engine.request.recipe import Recipe
from nanocommander.errors import RecipeError


def test_full_recipe_parses_and_round_trips(tmp_path, tiny):
    text = f"""# a comment
name: qwen-pirate
description: a test
members:
  large: {{path: {tiny["large"]}, gpu_layers: -1}}
  base:  {{path: {tiny["base"]}}}
  tuned: {{adapter: {tiny["lora"]}}}
alpha: 0.5
template: tuned
system: "You are a helpful assistant."
parameters: {{temperature: 0.7, top_p: 0.9, num_ctx: 4096, stop: ["<|im_end|>"]}}
"""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    recipe = Recipe.load(path)
    assert recipe.name == "qwen-pirate" and recipe.alpha == 0.5
    assert recipe.large.gpu_layers == -1 and recipe.tuned.is_adapter
    assert recipe.parameters["stop"] == ("<|im_end|>",) and recipe.parameters["num_ctx"] == 4096
    again = tmp_path / "again.yaml"
    again.write_text(recipe.dump())
    assert Recipe.load(again).to_dict() == recipe.to_dict()


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path, tiny):
    (tmp_path / "m").mkdir()
    for role in ("large", "base", "tuned"):
        (tmp_path / "m" / f"{role}.gguf").write_bytes(tiny[role].read_bytes())
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: rel\nmembers:\n  large: m/large.gguf\n  base: {path: m/base.gguf}\n  tuned: {path: m/tuned.gguf}\n"
    )
    assert Recipe.load(path).base.source.path == tmp_path / "m" / "base.gguf"


def test_hub_sources_are_parsed_and_validated():
    sha = "a" * 64
    recipe = Recipe.parse(f"""name: hub
members:
  large: {{hf: Qwen/Qwen2.5-1.5B-Instruct-GGUF, file: q4_k_m.gguf, revision: main, sha256: {sha}}}
  base: {{hf: hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M}}
  tuned: {{adapter: {{hf: me/adapters, file: pirate.gguf}}}}
""")
    assert recipe.large.source.hf == "Qwen/Qwen2.5-1.5B-Instruct-GGUF" and recipe.large.source.sha256 == sha
    assert recipe.base.source.file == "Q4_K_M"
    assert recipe.tuned.adapter.hf == "me/adapters"


BROKEN = [
    ("name: x\nmembers:\n\tlarge: a\n", 3, None, "invalid YAML"),
    ("name: x\nmembrs: {}\n", 2, "membrs", "did you mean 'members'"),
    (
        "name: x\nmembers:\n  large: {path: a.gguf, gpu_layer: 1}\n",
        3,
        "members.large.gpu_layer",
        "did you mean 'gpu_layers'",
    ),
    (
        "name: x\nmembers:\n  large: {path: a.gguf}\n  base: {path: b.gguf}\n  tuned: {path: c.gguf}\nalpha: lots\n",
        6,
        "alpha",
        "expected a number",
    ),
    (
        "name: x\nmembers:\n  large: {path: a.gguf}\n  base: {path: b.gguf}\n  tuned: {path: c.gguf}\n"
        "parameters:\n  temperature: hot\n",
        7,
        "parameters.temperature",
        "must be of type number",
    ),
    ("name: x\nmembers:\n  large: {path: a.gguf}\n  base: {path: b.gguf}\n", 2, "members.tuned", "missing"),
    (
        "name: x\nmembers:\n  large: {hf: ../etc, file: a.gguf}\n  base: {path: b}\n  tuned: {path: c}\n",
        3,
        "members.large.hf",
        "Hub repo id",
    ),
    (
        "name: x\nmembers:\n  large: {path: a, sha256: nothex}\n  base: {path: b}\n  tuned: {path: c}\n",
        3,
        "members.large.sha256",
        "64 hex",
    ),
]


@pytest.mark.parametrize("text,line,key,words", BROKEN)
def test_broken_recipes_name_file_line_and_key(text, line, key, words):
    with pytest.raises(RecipeError) as info:
        Recipe.parse(text, file="broken.yaml")
    err = info.value
    assert (err.file, err.line, err.key) == ("broken.yaml", line, key)
    assert words in str(err)
    assert str(err).startswith(f"broken.yaml:{line}: ")


def test_missing_member_file_is_named(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmembers:\n  large: {path: gone.gguf}\n  base: {path: b}\n  tuned: {path: c}\n")
    with pytest.raises(RecipeError, match=r"r.yaml:3: members.large.path: file not found: .*gone.gguf"):
        Recipe.load(path)


def test_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        Recipe.load(tmp_path / "nope.yaml")


def test_rpc_servers_and_tensor_split_parse_and_round_trip():
    recipe = Recipe.parse("""name: far
members:
  large: {path: l.gguf, rpc: ["10.0.0.5:50052", gpu-box], tensor_split: [3, 1.5]}
  base: {path: b.gguf, rpc: "10.0.0.7:1,10.0.0.8:2", gpu_layers: 4}
  tuned: {adapter: a.gguf}
""")
    assert recipe.large.rpc == ("10.0.0.5:50052", "gpu-box:50052") and recipe.large.tensor_split == (3.0, 1.5)
    assert recipe.large.gpu_layers == -1  # naming servers offloads every layer unless told otherwise
    assert recipe.base.rpc == ("10.0.0.7:1", "10.0.0.8:2") and recipe.base.gpu_layers == 4
    assert recipe.tuned.rpc == () and Recipe.parse(recipe.dump()).to_dict() == recipe.to_dict()
    assert recipe.to_dict()["members"]["large"]["rpc"] == ["10.0.0.5:50052", "gpu-box:50052"]


RPC_HEAD = "name: x\nmembers:\n  base: {path: b}\n  tuned: {path: c}\n  large:\n    path: a\n"
BROKEN_RPC = [
    (
        RPC_HEAD + "    rpc: [10.0.0.5:50052, 10.0.0.6:99999]\n",
        7,
        "members.large.rpc[1]",
        "expected host:port",
    ),
    (RPC_HEAD + "    rpc:\n      - '[::1]:50052'\n", 8, "members.large.rpc[0]", "IPv6 literals"),
    (RPC_HEAD + "    rpc: [a:1, a:1]\n", 7, "members.large.rpc[1]", "a:1 is listed twice"),
    (RPC_HEAD + "    rpc: []\n", 7, "members.large.rpc", "expected a list of host:port"),
    (RPC_HEAD + "    rpc: [{host: a}]\n", 7, "members.large.rpc[0]", "expected a single value"),
    (RPC_HEAD + "    tensor_split: [1, -2]\n", 7, "members.large.tensor_split[1]", ">= 0"),
    (RPC_HEAD + "    tensor_split: [0, 0]\n", 7, "members.large.tensor_split", "must be positive"),
    (RPC_HEAD + "    tensor_split: 3\n", 7, "members.large.tensor_split", "list of numbers"),
    (
        "name: x\nmembers:\n  large: {path: a}\n  base: {path: b}\n  tuned: {adapter: c, rpc: [h:1]}\n",
        5,
        "members.tuned.rpc",
        "runs where the base runs",
    ),
]


@pytest.mark.parametrize("text,line,key,words", BROKEN_RPC)
def test_broken_rpc_keys_name_file_line_and_key(text, line, key, words):
    with pytest.raises(RecipeError) as info:
        Recipe.parse(text, file="broken.yaml")
    assert (info.value.line, info.value.key) == (line, key) and words in str(info.value)
