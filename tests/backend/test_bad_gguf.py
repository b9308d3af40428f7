"""One unreadable GGUF hides only its own model: the lists still name the good ones, and loading
the bad one is a clear error in the protocol's own shape (issue 23, item 2)."""

from __future__ import annotations

import logging

import pytest
import requests
from helpers import recipe_yaml

from nanocommander.engine.request.recipe import Recipe


@pytest.fixture(scope="module")
def bad_files(tiny, tmp_path_factory):
    """A GGUF cut inside its header (unreadable) and one cut inside its tensor data (header reads)."""
    folder = tmp_path_factory.mktemp("bad-gguf")
    data = tiny["tuned"].read_bytes()
    header_cut, data_cut = folder / "header-cut.gguf", folder / "data-cut.gguf"
    header_cut.write_bytes(data[:200])
    data_cut.write_bytes(data[: len(data) - 4096])
    not_gguf = folder / "not-gguf.gguf"
    not_gguf.write_bytes(b"<html>404 Not Found</html>" * 40)
    return {"header": header_cut, "data": data_cut, "junk": not_gguf}


@pytest.fixture(scope="module")
def live(tiny, bad_files, start_server):
    def recipe(name: str, tuned=None) -> Recipe:
        files = {**tiny, "bad": tuned} if tuned is not None else tiny
        return Recipe.parse(recipe_yaml(files, name, tuned="bad" if tuned is not None else "tuned"))

    recipes = [
        recipe("good"),
        recipe("broken", bad_files["header"]),
        recipe("cut", bad_files["data"]),
        recipe("junk", bad_files["junk"]),
    ]
    return start_server(recipes, keep_alive=300, default_model="broken")


def test_ollama_tags_lists_the_good_model_and_flags_the_bad(live, bad_files, caplog):
    with caplog.at_level(logging.WARNING, logger="nanocommander"):
        r = requests.get(f"{live.url}/api/tags", timeout=30)
    assert r.status_code == 200, r.text
    models = {m["name"].removesuffix(":latest"): m for m in r.json()["models"]}
    assert {"good", "broken", "cut", "junk"} <= set(models)
    assert "error" not in models["good"] and models["good"]["size"] > 0
    assert str(bad_files["header"]) in models["broken"]["error"]
    assert "tuned" in models["broken"]["error"]
    assert "error" in models["junk"]
    assert "error" in models["broken"]["composite"]["members"]["tuned"]
    assert any(str(bad_files["header"]) in rec.getMessage() for rec in caplog.records)


def test_openai_models_lists_the_good_model(live):
    r = requests.get(f"{live.url}/v1/models", timeout=30)
    assert r.status_code == 200, r.text
    data = {m["id"].removesuffix(":latest"): m for m in r.json()["data"]}
    assert {"good", "broken", "junk"} <= set(data)
    assert "error" not in data["good"]
    assert "not a readable GGUF" in data["broken"]["error"]
    one = requests.get(f"{live.url}/v1/models/broken", timeout=30)
    assert one.status_code == 200 and "error" in one.json()


def test_kobold_lists_every_model_and_names_the_default(live):
    r = requests.get(f"{live.url}/api/admin/list_options", timeout=30)
    assert r.status_code == 200 and {"good:latest", "broken:latest"} <= set(r.json())
    assert requests.get(f"{live.url}/api/v1/model", timeout=30).json()["result"] == "koboldcpp/broken:latest"


def test_show_of_the_bad_model_is_not_a_500(live):
    r = requests.post(f"{live.url}/api/show", json={"model": "broken"}, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("name", ["broken", "cut", "junk"])
def test_loading_a_bad_model_is_a_clear_error_in_each_shape(live, name, bad_files):
    chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    o = requests.post(f"{live.url}/api/chat", json=chat, timeout=60)
    assert o.status_code == 500, o.text
    message = o.json()["error"]
    assert (
        f"'{name}:latest' cannot be loaded" in message
        and "tuned" in message
        and "internal error" not in message
    )
    v = requests.post(f"{live.url}/v1/chat/completions", json=chat, timeout=60)
    assert v.status_code == 500
    err = v.json()["error"]
    assert f"'{name}:latest'" in err["message"] and "internal error" not in err["message"]
    streamed = requests.post(f"{live.url}/api/generate", json={"model": name, "prompt": "hi"}, timeout=60)
    assert streamed.status_code == 500 and f"'{name}:latest'" in streamed.json()["error"]
    # the good model still answers beside it
    ok = requests.post(
        f"{live.url}/api/chat",
        json={**chat, "model": "good", "options": {"num_predict": 2}},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["done"]


def test_kobold_default_on_a_bad_model_is_a_kobold_error(live):
    r = requests.post(f"{live.url}/api/v1/generate", json={"prompt": "hi", "max_length": 2}, timeout=60)
    assert r.status_code == 500, r.text
    detail = r.json()["detail"]
    assert "'broken:latest'" in detail["msg"] and "internal error" not in detail["msg"]


def test_a_stored_model_whose_blob_was_cut_is_flagged_not_hiding_the_rest(live, tiny, tmp_path):
    """A store entry (pulled from a recipe) whose tuned blob is later cut short: listed, flagged."""
    from nanocommander.registry import Registry

    cut = tmp_path / "tuned-copy.gguf"
    cut.write_bytes(tiny["tuned"].read_bytes())
    recipe = tmp_path / "stored.yaml"
    recipe.write_text(recipe_yaml({**tiny, "copy": cut}, "stored", tuned="copy"))
    pulled = requests.post(f"{live.url}/api/pull", json={"model": str(recipe), "stream": False}, timeout=60)
    assert pulled.status_code == 200, pulled.text
    blob = Registry().resolve("stored").member("tuned").source.path
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:300])
    models = {m["name"]: m for m in requests.get(f"{live.url}/api/tags", timeout=30).json()["models"]}
    assert "error" in models["stored:latest"] and "error" not in models["good:latest"]
    r = requests.post(f"{live.url}/api/generate", json={"model": "stored", "prompt": "hi"}, timeout=60)
    assert r.status_code == 500 and "'stored:latest' cannot be loaded: member tuned" in r.json()["error"]
