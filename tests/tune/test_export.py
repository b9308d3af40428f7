"""GGUF -> torch loading and PEFT -> llama.cpp adapter export, checked against llama.cpp itself."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from nanocommander.tune import export  # noqa: E402
from nanocommander.tune.errors import ExportError, TrainingError  # noqa: E402
from nanocommander.tune.hfmodel import TARGETS, load_torch_model, read_info  # noqa: E402

PROMPTS = [[268, 269, 117, 115, 260, 10, 257, 263, 111, 258, 266, 270], [5, 6, 7, 100, 200, 258]]


def random_lora(model, *, rank=4, alpha=8.0, rslora=False, seed=1):
    """A PEFT LoRA with non-zero B, so it changes the logits from the first token on."""
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS), use_rslora=rslora)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return lora


HEADS = {"llama": (4, 2), "qwen2": (4, 2), "gemma3": (2, 1)}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
def test_gguf_loads_into_torch_with_the_twins_weights(twin, kind):
    model, path = twin(kind)
    info = read_info(path)
    assert (info.arch, (info.n_head, info.n_head_kv), info.permute_qk) == (kind, HEADS[kind], kind == "llama")
    loaded = load_torch_model(info, device="cpu")
    x = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize(("kind", "rslora"), [("llama", False), ("qwen2", False), ("llama", True)])
def test_exported_adapter_matches_peft_in_llama_cpp(twin, tmp_path, kind, rslora):
    _, path = twin(kind)
    info = read_info(path)
    lora = random_lora(load_torch_model(info, device="cpu"), rslora=rslora)
    adapter = export.export_peft(lora, info, tmp_path / "a.gguf")
    result = export.self_check(lora, info, adapter, PROMPTS, tolerance=1e-3)
    print(kind, "rslora" if rslora else "", result)
    assert result.ok and result.max_diff < 1e-3
    assert result.adapter_effect > 1.0  # the adapter really changes the logits, so the match means something
    reader = gguf.GGUFReader(str(adapter))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(8.0 * (2.0 if rslora else 1.0))
    names = {t.name for t in reader.tensors}
    assert len(names) == 2 * 7 * 2 and "blk.1.ffn_down.weight.lora_b" in names
    a = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight.lora_a")
    assert tuple(a.shape) == (128, 4)  # ne order: [in, rank]


def test_gemma3_adapter_adds_no_error_beyond_the_base(twin, tmp_path):
    """llama.cpp's CPU GELU is a f16 table, so bare gemma3 already differs by ~1e-3; the adapter adds nothing."""
    _, path = twin("gemma3")
    info = read_info(path)
    lora = random_lora(load_torch_model(info, device="cpu"))
    adapter = export.export_peft(lora, info, tmp_path / "g.gguf")
    result = export.self_check(lora, info, adapter, PROMPTS, tolerance=1e-3)
    print("gemma3", result)
    assert result.base_gap < 3e-3 and result.max_diff < result.base_gap + 1e-3
    assert result.adapter_effect > 1.0


def test_llama_without_the_qk_permutation_does_not_match(twin, tmp_path, monkeypatch):
    """The check can fail: skipping the q/k row permutation is caught."""
    _, path = twin("llama")
    info = read_info(path)
    lora = random_lora(load_torch_model(info, device="cpu"))
    monkeypatch.setattr(export, "permute_rows", lambda w, n_head: w)
    adapter = export.export_peft(lora, info, tmp_path / "bad.gguf")
    result = export.self_check(lora, info, adapter, PROMPTS, tolerance=1e-3)
    assert not result.ok and result.max_diff > 1e-2


def test_permute_rows_matches_transformers_reverse(twin):
    w = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    permuted = export.permute_rows(w, 2)
    # transformers' LlamaTensorProcessor undo: reshape(n_head, dim, 2, ...) and swap back
    undone = permuted.reshape(2, 4, 2, 3).swapaxes(2, 1).reshape(16, 3)
    assert np.array_equal(undone, w) and not np.array_equal(permuted, w)


def test_export_rejects_what_llama_cpp_cannot_run(twin, tmp_path):
    _, path = twin("qwen2")
    info = read_info(path)
    with pytest.raises(ExportError, match="lm_head"):
        export.adapter_tensors({"base_model.model.lm_head.lora_A.weight": np.zeros((4, 64))}, info)
    with pytest.raises(ExportError, match="has no"):
        export.adapter_tensors(
            {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 64))}, info
        )
    adapter = tmp_path / "lora.gguf"
    export.write_adapter(
        adapter,
        {
            "blk.0.attn_q.weight.lora_a": np.zeros((4, 64), np.float32),
            "blk.0.attn_q.weight.lora_b": np.zeros((64, 4), np.float32),
        },
        info,
        alpha=8,
    )
    with pytest.raises(TrainingError, match="adapter"):
        read_info(adapter)
