"""Adapter families over the server: members created with Ollama's `adapters` field, then served from
one family unit whose tuned contexts switch adapters; every answer equals a fresh server's."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest
import tiny_models

from nanocommander.backend.server import MANAGER
from nanocommander.engine.request.recipe import Recipe

N_STYLES = 4
PROMPTS = ["<|im_start|>user\nhello there", "<|im_start|>user\nhello there, how are", "tell me the news"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("adapters")
    out = {
        f"style{i}": tiny_models.write_lora(folder / f"style{i}.gguf", seed=100 + i, std=1.0, q8_a=True)
        for i in range(6)
    }
    out["wide"] = tiny_models.write_lora(folder / "wide.gguf", seed=99, shape=tiny_models.LARGE)
    return out


@pytest.fixture(scope="module")
def styles(tiny, adapters) -> list[Recipe]:
    """Command-line composites over the tiny large and base, one LoRA each, alphas 1 and 1.5."""
    return [
        Recipe.parse(
            f"name: style{i}\nmembers:\n  large: {{path: {tiny['large']}}}\n  base: {{path: {tiny['base']}}}\n"
            f"  tuned: {{adapter: {adapters[f'style{i}']}}}\nalpha: {1.0 + 0.5 * (i % 2)}\n",
            check_files=True,
        )
        for i in range(N_STYLES)
    ]


@pytest.fixture(scope="module")
def live(start_server, recipe_of, styles):
    return start_server(
        [recipe_of("fam", adapter=True), *styles], keep_alive=300, max_queue=64, family_slots=2
    )


def generate(url: str, model: str, prompt: str, member: str = "composite") -> str:
    body = {
        "model": model,
        "prompt": prompt,
        "raw": True,
        "stream": False,
        "options": {"temperature": 0, "num_predict": 10, "member": member},
    }
    r = httpx.post(f"{url}/api/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["response"]


@pytest.fixture(scope="module")
def fresh(start_server, styles) -> dict[tuple[int, str, str], str]:
    """Each member's answers from a server that serves that member alone, freshly started."""
    out = {}
    for i, recipe in enumerate(styles):
        ref = start_server([recipe])
        for prompt in PROMPTS:
            for member in ("composite", "tuned"):
                out[i, prompt, member] = generate(ref.url, recipe.name, prompt, member)
    return out


def upload(url: str, path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{url}/api/blobs/{digest}", content=data).status_code == 201
    return digest


def test_create_members_with_the_ollama_client(live, adapters):
    client = ollama.Client(host=live.url)
    for name in ("style4", "style5"):
        digest = upload(live.url, adapters[name])
        events = list(client.create(name, from_="fam", adapters={f"{name}.gguf": digest}, stream=True))
        assert events[-1].status == "success"
    shown = httpx.post(f"{live.url}/api/show", json={"model": "style5"}).json()
    tuned = shown["composite"]["members"]["tuned"]
    assert tuned["adapter"].endswith(hashlib.sha256(adapters["style5"].read_bytes()).hexdigest())


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


def test_every_member_is_listed_by_every_protocol(live):
    names = {f"style{i}:latest" for i in range(6)} | {"fam:latest"}
    assert names <= {m.model for m in ollama.Client(host=live.url).list().models}
    assert names <= {m["id"] for m in httpx.get(f"{live.url}/v1/models").json()["data"]}
    assert names <= set(httpx.get(f"{live.url}/api/admin/list_options").json())


def test_interleaved_members_answer_as_fresh_servers(live, fresh):
    order = [0, 1, 0, 2, 3, 1, 1, 3, 0, 2, 2, 1, 3, 0, 3, 2]
    for step, i in enumerate(order):
        prompt, member = PROMPTS[step % len(PROMPTS)], "tuned" if step % 4 == 3 else "composite"
        assert generate(live.url, f"style{i}", prompt, member) == fresh[i, prompt, member], (step, i)
    family = live.app[MANAGER].loaded["style0:latest"].composite.family  # in this process or a runner
    info = family.info()
    assert info["switches"] >= 8 and len(info["tuned_contexts"]) == 2


def test_concurrent_requests_to_many_members_answer_as_fresh_servers(live, fresh):
    jobs = [(i % N_STYLES, PROMPTS[(i // N_STYLES) % len(PROMPTS)], "composite") for i in range(12)]
    jobs += [(i, PROMPTS[0], "tuned") for i in range(N_STYLES)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: generate(live.url, f"style{job[0]}", job[1], job[2]), jobs))
    assert answers == [fresh[job] for job in jobs]


def test_ps_shows_one_family_with_its_adapters_and_memory(live, adapters):
    for name in ("style4", "style5"):  # created over the API, from the store
        generate(live.url, name, PROMPTS[0])
    models = httpx.get(f"{live.url}/api/ps").json()["models"]
    assert len(models) == 1  # seven composites loaded, one family unit
    entry = models[0]
    family = entry["family"]
    assert entry["model"] == "style5:latest"  # named by its most recently used member
    assert {f"style{i}:latest" for i in range(6)} <= set(family["members"])
    assert len(family["tuned_contexts"]) == 2
    in_contexts = {c["adapter"] for c in family["tuned_contexts"]}
    assert in_contexts <= set(family["adapters"]) and 2 <= len(family["adapters"]) <= 4  # + 2 kept warm
    memory = family["memory"]
    assert entry["size"] == memory["total"]
    loras = sum(Path(a).stat().st_size for a in family["adapters"])
    assert memory["members"]["tuned"]["weights"] == loras  # the adapters loaded, once each
    assert memory["members"]["tuned"]["kv_cache"] == 2 * memory["members"]["base"]["kv_cache"]
    assert memory["members"]["large"]["weights"] > 0 and memory["members"]["base"]["weights"] > 0
    if live.app[MANAGER].fleet is None:
        pooled = {p.name for p in live.app[MANAGER].pool.loaded()}
        assert len(pooled) == 2  # large and base: one copy of the weights for all members
    else:  # one runner serves the whole family
        assert entry["runner_pid"] == entry["runner"]["pid"] and len(live.app[MANAGER].fleet.runners) == 1


def test_kobold_clients_pick_a_member_by_reload_config(live, fresh):
    r = httpx.post(f"{live.url}/api/admin/reload_config", json={"filename": "style2"})
    assert r.status_code == 200 and r.json() == {"success": True}
    assert httpx.get(f"{live.url}/api/v1/model").json()["result"] == "koboldcpp/style2:latest"
    body = {"prompt": PROMPTS[2], "max_length": 10, "temperature": 0, "rep_pen": 1.0}
    text = httpx.post(f"{live.url}/api/v1/generate", json=body, timeout=60).json()["results"][0]["text"]
    assert text == fresh[2, PROMPTS[2], "composite"]
    missing = httpx.post(f"{live.url}/api/admin/reload_config", json={"filename": "nope"})
    assert missing.status_code == 404 and "detail" in missing.json()


def test_unloading_members_keeps_the_others_until_the_last(live, fresh):
    manager = live.app[MANAGER]
    for name in ("style1", "style4", "style5", "fam"):
        httpx.post(f"{live.url}/api/generate", json={"model": name, "keep_alive": 0})
    family = httpx.get(f"{live.url}/api/ps").json()["models"][0]["family"]
    assert "style1:latest" not in family["members"] and "style0:latest" in family["members"]
    assert generate(live.url, "style3", PROMPTS[1]) == fresh[3, PROMPTS[1], "composite"]
    for name in ("style0", "style2", "style3"):
        httpx.post(f"{live.url}/api/generate", json={"model": name, "keep_alive": 0})
    assert httpx.get(f"{live.url}/api/ps").json()["models"] == []
    assert manager.families == {} and manager.pool.loaded() == []
    assert manager.fleet is None or manager.fleet.runners == {}  # the family's runner stopped
    assert generate(live.url, "style1", PROMPTS[0]) == fresh[1, PROMPTS[0], "composite"]  # loads again
