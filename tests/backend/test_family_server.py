"""Adapter families over the server: create members with Ollama's `adapters` field, then serve them."""

from __future__ import annotations

import hashlib

import httpx
import ollama
import pytest
import tiny_models


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("adapters")
    out = {f"style{i}": tiny_models.write_lora(folder / f"style{i}.gguf", seed=100 + i) for i in range(4)}
    out["wide"] = tiny_models.write_lora(folder / "wide.gguf", seed=99, shape=tiny_models.LARGE)
    return out


@pytest.fixture(scope="module")
def live(start_server, recipe_of):
    return start_server([recipe_of("fam", adapter=True)], keep_alive=300, max_queue=16)


def upload(url: str, path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{url}/api/blobs/{digest}", content=data).status_code == 201
    return digest


def test_create_members_with_the_ollama_client(live, adapters):
    client = ollama.Client(host=live.url)
    for i in range(2):
        name = f"style{i}"
        digest = upload(live.url, adapters[name])
        events = list(client.create(name, from_="fam", adapters={f"{name}.gguf": digest}, stream=True))
        assert events[-1].status == "success"
    names = {m.model for m in client.list().models}
    assert {"fam:latest", "style0:latest", "style1:latest"} <= names
    ids = {m["id"] for m in httpx.get(f"{live.url}/v1/models").json()["data"]}
    assert {"style0:latest", "style1:latest"} <= ids
    shown = httpx.post(f"{live.url}/api/show", json={"model": "style1"}).json()
    assert shown["composite"]["members"]["tuned"]["adapter"].endswith(
        hashlib.sha256(adapters["style1"].read_bytes()).hexdigest()
    )


def test_a_misfit_adapter_is_a_400_and_creates_nothing(live, adapters):
    client = ollama.Client(host=live.url)
    digest = upload(live.url, adapters["wide"])
    with pytest.raises(ollama.ResponseError) as info:
        client.create("wide", from_="fam", adapters={"wide.gguf": digest})
    assert info.value.status_code == 400 and "does not fit the base" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.create("wide", adapters={"wide.gguf": digest})
    assert info.value.status_code == 400 and '"from"' in info.value.error
    assert "wide:latest" not in {m.model for m in client.list().models}
