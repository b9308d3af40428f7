"""/api/pull from a (fake, local) Hugging Face Hub with the official client: byte progress, then serving."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import httpx
import ollama
import pytest

HUB_SERVER = Path(__file__).parents[1] / "registry" / "hub_server.py"


def load_fake_hub():
    spec = importlib.util.spec_from_file_location("nc_test_hub_server", HUB_SERVER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module.FakeHub


@pytest.fixture(scope="module")
def hub_setup(tiny, tmp_path_factory, start_server, recipe_of):
    if not HUB_SERVER.exists():
        pytest.skip("the registry's fake Hub (tests/registry/hub_server.py) is not in this checkout")
    hub = load_fake_hub()().start()
    mp = pytest.MonkeyPatch()  # the registry reads HF_* at each call, in the server's process
    home = tmp_path_factory.mktemp("hf")
    mp.setenv("HF_ENDPOINT", hub.url)
    mp.setenv("HF_HOME", str(home))
    mp.setenv("HF_TOKEN", "hf_test_token")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"):
        mp.delenv(var, raising=False)
    files = {}
    for role in ("large", "base", "tuned"):
        repo, name = f"org/tiny-{role}-GGUF", f"tiny-{role}-F32.gguf"
        hub.commit(repo, {name: tiny[role].read_bytes(), "README.md": b"# tiny\n"})
        files[role] = f"{{hf: {repo}, file: {name}}}"
    recipe = tmp_path_factory.mktemp("recipes") / "hubby.yaml"
    recipe.write_text(
        "name: hubby\nmembers:\n"
        + "".join(f"  {role}: {src}\n" for role, src in files.items())
        + "alpha: 0.5\n"
    )
    live = start_server([recipe_of("tiny")])
    yield live, recipe
    mp.undo()
    hub.stop()


def test_pull_streams_byte_progress_then_the_model_serves(hub_setup):
    live, recipe = hub_setup
    client = ollama.Client(host=live.url)
    events = list(client.pull(str(recipe), stream=True))  # each line passes ProgressResponse validation
    assert events[0].status and events[-1].status == "success"
    moving = [e for e in events if e.digest and e.total]
    assert {e.digest for e in moving} and all(e.digest.startswith("sha256:") for e in moving)
    finals = {}
    for e in moving:
        finals[e.digest] = e
    assert all(e.completed == e.total for e in finals.values())  # every blob arrived whole
    assert "hubby:latest" in {m.model for m in client.list().models}
    shown = client.show("hubby")
    assert shown.modelinfo is not None and shown.details.family == "llama"
    assert client.chat("hubby", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3}).done

    # stream:false answers with the last progress object only
    again = httpx.post(f"{live.url}/api/pull", json={"model": str(recipe), "stream": False}, timeout=60)
    assert again.status_code == 200 and again.json() == {"status": "success"}


def test_copy_and_delete_through_the_client(hub_setup):
    live, _ = hub_setup
    client = ollama.Client(host=live.url)
    assert client.copy("hubby", "hubby-2").status == "success"
    client.delete("hubby-2")
    assert "hubby-2:latest" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("hubby-2")
    assert info.value.status_code == 404


def test_a_failed_pull_ends_the_stream_with_an_error(hub_setup):
    live, _ = hub_setup
    client = ollama.Client(host=live.url)
    with pytest.raises(ollama.ResponseError) as info:
        list(client.pull("hf.co/org/does-not-exist", stream=True))
    assert info.value.error


def test_push_a_created_model_to_the_hub_and_pull_it_back(hub_setup):
    live, _ = hub_setup
    client = ollama.Client(host=live.url)
    # create from an existing (command-line) model, overriding its system prompt and parameters
    events = list(
        client.create("mine", from_="tiny", system="Be brief.", parameters={"temperature": 0.1}, stream=True)
    )
    assert events[-1].status == "success"
    shown = httpx.post(f"{live.url}/api/show", json={"model": "mine"}).json()
    assert shown["system"] == "Be brief." and "temperature" in shown["parameters"]
    r = httpx.post(
        f"{live.url}/api/push", json={"model": "mine", "destination": "hf.co/org/mine"}, timeout=60
    )
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200 and lines[-1] == {"status": "success"}, lines
    assert any(e.get("status", "").startswith("pushing") for e in lines)
    client.delete("mine")
    pulled = list(client.pull("hf.co/org/mine", stream=True))
    assert pulled[-1].status == "success"
    assert (
        httpx.post(f"{live.url}/api/show", json={"model": "hf.co/org/mine"}).json()["system"] == "Be brief."
    )


def test_blobs_then_create_from_files(hub_setup, tiny):
    live, _ = hub_setup
    data = tiny["large"].read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    absent = "sha256:" + hashlib.sha256(b"never uploaded").hexdigest()
    missing = httpx.head(f"{live.url}/api/blobs/{absent}")
    assert missing.status_code == 404
    wrong = httpx.post(f"{live.url}/api/blobs/sha256:{'0' * 64}", content=data)
    assert wrong.status_code == 400 and "digest mismatch" in wrong.json()["error"]
    blobs = Path(os.environ["NANOCOMMANDER_MODELS"]) / "blobs"
    assert not [p.name for p in blobs.iterdir() if p.name.startswith(".")]  # a failed upload leaves nothing
    assert httpx.post(f"{live.url}/api/blobs/sha256:xyz", content=b"x").status_code == 400
    assert httpx.post(f"{live.url}/api/blobs/{digest}", content=data).status_code == 201
    assert httpx.head(f"{live.url}/api/blobs/{digest}").status_code == 200
    client = ollama.Client(host=live.url)
    # Open WebUI's GGUF upload: the blob, then create with files -> a plain model (one file as all members)
    assert (
        list(client.create("plain", files={"tiny-large.gguf": digest}, stream=True))[-1].status == "success"
    )
    plain = client.generate("plain", "hi", options={"temperature": 0, "num_predict": 6}).response
    large = client.generate(
        "tiny", "hi", options={"temperature": 0, "num_predict": 6, "member": "large"}
    ).response
    assert plain == large
    with pytest.raises(ollama.ResponseError) as info:
        client.create("nothing")
    assert info.value.status_code == 400 and "neither 'from' or 'files'" in info.value.error
