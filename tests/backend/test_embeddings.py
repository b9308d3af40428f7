"""Embeddings from the official clients, against llama-cpp-python's own `Llama(embedding=True).embed`."""

from __future__ import annotations

import httpx
import llama_cpp
import numpy as np
import ollama
import pytest
import tiny_models
from openai import OpenAI

from nanocommander.engine.request.recipe import Recipe

TEXTS = ["the cat sat on the mat", "über café — naïve"]


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """A GGUF that declares last-token pooling, as decoder embedding models do."""
    path = tmp_path_factory.mktemp("embed") / "embed-last.gguf"
    return tiny_models.write_model(path, seed=9, name="tiny-embed", pooling=3)


@pytest.fixture(scope="module")
def live(start_server, tiny, pooled):
    members = (
        f"members:\n  large: {{path: {tiny['large']}}}\n  base: {{path: {tiny['base']}}}\n"
        f"  tuned: {{path: {tiny['tuned']}}}\n"
    )
    recipes = [
        Recipe.parse(f"name: comp\n{members}parameters: {{num_ctx: 64}}\n", check_files=True),
        Recipe.parse(f"name: comp-embed\n{members}embedding: {{path: {pooled}}}\n", check_files=True),
    ]
    return start_server(recipes, max_body=1 << 20, keep_alive=300, max_queue=16)


def reference(path, texts, *, pooling: int | None = None, normalize: bool = True) -> np.ndarray:
    kw = {} if pooling is None else {"pooling_type": pooling}
    llm = llama_cpp.Llama(str(path), embedding=True, verbose=False, flash_attn=True, n_ctx=512, **kw)
    try:
        return np.array([llm.embed(t, normalize=normalize) for t in texts])
    finally:
        llm.close()


def test_api_embed_is_the_large_members_mean_pooled_embedding(live, tiny):
    client = ollama.Client(host=live.url)
    out = client.embed("comp", input=TEXTS)
    got = np.array(out.embeddings)
    want = reference(tiny["large"], TEXTS, pooling=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    assert got.shape == (2, tiny_models.LARGE.n_embd)
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert np.linalg.norm(got, axis=1) == pytest.approx([1, 1], abs=1e-5)
    assert out.prompt_eval_count > 0
    single = np.array(client.embed("comp", input=TEXTS[0]).embeddings)
    np.testing.assert_allclose(single[0], got[0], atol=1e-5)


def test_recipe_embedding_gguf_with_declared_pooling(live, pooled):
    got = np.array(ollama.Client(host=live.url).embed("comp-embed", input=TEXTS).embeddings)
    np.testing.assert_allclose(got, reference(pooled, TEXTS), atol=2e-3)  # the model's own (last) pooling


def test_dimensions_truncate_then_renormalise(live, tiny):
    got = np.array(ollama.Client(host=live.url).embed("comp", input=TEXTS, dimensions=16).embeddings)
    raw = reference(tiny["large"], TEXTS, pooling=llama_cpp.LLAMA_POOLING_TYPE_MEAN, normalize=False)[:, :16]
    np.testing.assert_allclose(got, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=2e-3)


def test_legacy_embeddings_are_raw(live, tiny):
    got = np.array(ollama.Client(host=live.url).embeddings("comp", prompt=TEXTS[0]).embedding)
    want = reference(tiny["large"], TEXTS[:1], pooling=llama_cpp.LLAMA_POOLING_TYPE_MEAN, normalize=False)[0]
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def test_openai_embeddings_float_base64_and_dimensions(live, tiny):
    client = OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    want = reference(tiny["large"], TEXTS, pooling=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    default = client.embeddings.create(model="comp", input=TEXTS)  # the client asks for base64 and decodes
    as_float = client.embeddings.create(model="comp", input=TEXTS, encoding_format="float")
    for out in (default, as_float):
        assert [d.index for d in out.data] == [0, 1] and out.usage.prompt_tokens > 0
        np.testing.assert_allclose(np.array([d.embedding for d in out.data]), want, atol=2e-3)
    short = client.embeddings.create(model="comp", input=TEXTS[0], dimensions=8)
    assert len(short.data[0].embedding) == 8
    assert np.linalg.norm(short.data[0].embedding) == pytest.approx(1, abs=1e-5)


def test_truncate_and_bad_inputs(live):
    long = "word " * 200  # more tokens than comp's 64-token embedding context
    ok = httpx.post(f"{live.url}/api/embed", json={"model": "comp", "input": long}).json()
    assert len(ok["embeddings"]) == 1 and ok["prompt_eval_count"] == 64
    r = httpx.post(f"{live.url}/api/embed", json={"model": "comp", "input": long, "truncate": False})
    assert r.status_code == 400 and "context length" in r.json()["error"]
    r = httpx.post(f"{live.url}/v1/embeddings", json={"model": "comp", "input": [1, 2, 3]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{live.url}/api/embed", json={"model": "nope", "input": "x"})
    assert r.status_code == 404
    r = httpx.post(f"{live.url}/v1/embeddings", json={"model": "comp", "input": "x", "dimensions": 0})
    assert r.status_code == 400
