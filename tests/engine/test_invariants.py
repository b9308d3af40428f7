"""The composite's math: alpha = 0 is the large model, large = base gives the tuned model, and the
fused logits are exactly large + alpha * (tuned - base)."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import GREEDY, recipe_over, run_text
from llama_cpp import Llama

from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite

PROMPT = "<|im_start|>user\nthe answer is<|im_end|>\n<|im_start|>assistant\n"


def reference_greedy(model_path, prompt_ids, n, lora=None) -> list[int]:
    """Greedy tokens from llama-cpp-python's own high-level API, an independent code path."""
    llm = Llama(model_path=str(model_path), lora_path=str(lora) if lora else None, n_ctx=512, verbose=False)
    out = []
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        if llm.token_eos() == tok or tok in (270,):
            break
        out.append(tok)
        if len(out) == n:
            break
    llm.close()
    return out


def composite_tokens(comp, prompt_ids, n, **kw) -> list[int]:
    toks = []
    for chunk in comp.generate(GenerateRequest(prompt=prompt_ids, sampling=GREEDY, num_predict=n, **kw)):
        toks += chunk.token_ids
    return toks


def test_alpha_zero_equals_the_large_model_alone(tiny, composite):
    ids = composite.tokenize(PROMPT)
    expected = reference_greedy(tiny["large"], ids, 20)
    assert len(expected) > 5
    assert composite_tokens(composite, ids, 20, alpha=0.0)[: len(expected)] == expected


def test_alpha_zero_does_not_run_the_small_models(composite):
    before = {r: m.stats.evaluated for r, m in composite.members.items()}
    run_text(composite, "some fresh text", alpha=0.0, num_predict=5)
    assert composite.members["large"].stats.evaluated > before["large"]
    assert composite.members["base"].stats.evaluated == before["base"]
    assert composite.members["tuned"].stats.evaluated == before["tuned"]


def test_composite_differs_from_large_when_alpha_is_nonzero(composite):
    ids = composite.tokenize(PROMPT)
    assert composite_tokens(composite, ids, 20, alpha=1.0) != composite_tokens(composite, ids, 20, alpha=0.0)


@pytest.mark.parametrize("adapter", [False, True], ids=["tuned-gguf", "tuned-lora"])
def test_large_equal_to_base_gives_the_tuned_model(tiny, adapter):
    comp = Composite.load(recipe_over(tiny, large="base", adapter=adapter))
    try:
        ids = comp.tokenize(PROMPT)
        if adapter:
            expected = reference_greedy(tiny["base"], ids, 20, lora=tiny["lora"])
        else:
            expected = reference_greedy(tiny["tuned"], ids, 20)
        assert len(expected) > 5
        assert composite_tokens(comp, ids, 20)[: len(expected)] == expected
    finally:
        comp.close()


def test_fused_logits_equal_numpy_sum_of_member_logits(tiny):
    alpha = 0.7
    comp = Composite.load(recipe_over(tiny, alpha=alpha))
    try:
        ids = comp.tokenize(PROMPT + "ab")
        members = [comp.members[r] for r in ("large", "base", "tuned")]
        fused = comp.fused_logits(members, alpha, ids).copy()
        own = {}
        for m in members:  # each member's logits for the same batch, evaluated again from scratch
            m.reset()
            own[m.role] = m.eval(ids)
    finally:
        comp.close()
    expected = own["large"] + np.float32(alpha) * (own["tuned"] - own["base"])
    np.testing.assert_array_equal(fused, expected)
    assert not np.allclose(fused, own["large"], atol=1e-2)  # the delta really is there
    # and each member's logits are that model's own, as llama-cpp-python's high-level API computes them
    llm = Llama(model_path=str(tiny["tuned"]), n_ctx=512, logits_all=True, verbose=False)
    llm.eval(ids)
    np.testing.assert_allclose(own["tuned"], np.array(llm.scores[len(ids) - 1]), atol=2e-2)
    llm.close()


def test_non_finite_fused_logits_are_a_clear_error_not_garbage():
    from nanocommander.engine.decode.fusion import fuse
    from nanocommander.errors import InvalidRequest

    large = np.zeros(8, np.float32)
    base, tuned = np.zeros(8, np.float32), np.zeros(8, np.float32)
    tuned[3] = 3e38  # alpha * (tuned - base) overflows float32
    with pytest.raises(InvalidRequest, match="not finite"):
        fuse(large, base, tuned, 100.0, 8, None, np.empty(8, np.float32))
    tuned[3] = np.nan
    with pytest.raises(InvalidRequest, match="not finite"):
        fuse(large, base, tuned, 1.0, 8, None, np.empty(8, np.float32))
    tuned[3] = 1.0
    out = fuse(large, base, tuned, 1.0, 8, np.arange(8) > 5, np.empty(8, np.float32))  # masked -inf is fine
    assert out[3] == 1.0 and np.isneginf(out[6:]).all()
