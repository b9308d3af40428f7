"""PEFT LoRA -> llama.cpp LoRA GGUF, and a self-check that llama.cpp computes what PEFT computes.

The file layout is llama.cpp's (convert_lora_to_gguf.py): `general.type=adapter`,
`adapter.type=lora`, `adapter.lora.alpha`, and per layer `blk.N.<tensor>.weight.lora_a`
(rank x in) and `.lora_b` (out x rank). Two quirks matter: llama.cpp stores llama's
q/k rows in a rotary-friendly order, so lora_b of q and k gets the same permutation;
and llama.cpp scales by alpha/rank, so rsLoRA's alpha/sqrt(rank) is folded into alpha.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

from nanocommander.tune.errors import ExportError
from nanocommander.tune.hfmodel import BaseInfo

GGUF_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$")
DEFAULT_TOLERANCE = 1e-2
Q8_BLOCK = 32  # values per Q8_0 block
QUANTIZED_SLACK = 0.02  # of the adapter's effect, when the base GGUF is quantized


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute on the output rows: HF rotary halves -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def adapter_tensors(state: dict[str, np.ndarray], info: BaseInfo) -> dict[str, np.ndarray]:
    """Map PEFT's lora_A/lora_B arrays to llama.cpp tensor names, applying the architecture's quirks."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        match = _KEY.search(key)
        if match is None or match.group(2) not in GGUF_NAMES:
            raise ExportError(
                f"cannot export '{key}': llama.cpp adapters take lora_A/lora_B of "
                f"{', '.join(GGUF_NAMES)} only"
            )
        layer, module, which = int(match.group(1)), match.group(2), match.group(3)
        w = np.ascontiguousarray(value, dtype=np.float32)
        if which == "B" and info.permute_qk and module in ("q_proj", "k_proj"):
            w = permute_rows(w, info.n_head if module == "q_proj" else info.n_head_kv)
        name = f"blk.{layer}.{GGUF_NAMES[module]}.weight.lora_{which.lower()}"
        if name in out:
            raise ExportError(f"two tensors map to {name}")
        out[name] = np.ascontiguousarray(w)
    for name in out:
        twin = name[:-1] + ("b" if name.endswith("a") else "a")
        if twin not in out:
            raise ExportError(f"{name} has no {twin}")
    if not out:
        raise ExportError("the adapter has no LoRA weights")
    return out


def llama_cpp_alpha(alpha: float, rank: int, use_rslora: bool) -> float:
    """The alpha that makes llama.cpp's alpha/rank equal PEFT's scale."""
    return alpha * math.sqrt(rank) if use_rslora else alpha


def write_adapter(
    path: str | Path,
    tensors: dict[str, np.ndarray],
    info: BaseInfo,
    *,
    alpha: float,
    name: str = "nanocommander-lora",
    q8_a: bool = False,
) -> Path:
    """Write the GGUF atomically (temp file, then rename) so a crash never leaves half an adapter.

    `q8_a` stores each lora_a as Q8_0 (where its rows split into 32-value blocks): llama.cpp's CPU
    kernels for a Q8_0 lora_a give the same logits whatever the batch, so a request served next to
    others equals the same request alone (README, "Continuous batching"); F32 ones do not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        w = gguf.GGUFWriter(str(tmp), info.arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_name(name)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        q8 = gguf.GGMLQuantizationType.Q8_0
        for tname in sorted(tensors, key=_tensor_order):
            t = tensors[tname]
            if q8_a and tname.endswith("lora_a") and t.shape[-1] % Q8_BLOCK == 0:
                w.add_tensor(tname, gguf.quants.quantize(t, q8), raw_dtype=q8)
            else:
                w.add_tensor(tname, t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_peft(model, info: BaseInfo, path: str | Path, *, q8_a: bool = False) -> Path:
    """Write a PEFT model's (single, 'default') LoRA as a llama.cpp adapter GGUF."""
    from peft import get_peft_model_state_dict

    config = model.peft_config["default"]
    if getattr(config, "rank_pattern", None) or getattr(config, "alpha_pattern", None):
        raise ExportError("per-module rank/alpha patterns cannot be expressed in one adapter.lora.alpha")
    if getattr(config, "use_dora", False):
        raise ExportError("DoRA adapters cannot be run by llama.cpp")
    state = {k: v.detach().float().cpu().numpy() for k, v in get_peft_model_state_dict(model).items()}
    tensors = adapter_tensors(state, info)
    alpha = llama_cpp_alpha(float(config.lora_alpha), int(config.r), bool(config.use_rslora))
    return write_adapter(path, tensors, info, alpha=alpha, q8_a=q8_a)


@dataclass(frozen=True)
class CheckResult:
    max_diff: float  # max |PEFT - llama.cpp with adapter| over all positions of all prompts
    base_gap: float  # the same for the bare base (dequantization/rounding that the adapter cannot fix)
    adapter_effect: float  # max |logit change| the adapter causes, so a no-op adapter is visible
    tolerance: float
    rounded: bool = False  # lora_a was stored as Q8_0: its rounding bends the effect too

    @property
    def ok(self) -> bool:
        """Within tolerance of what the bare base already differs by; on a quantized base the
        rounding also bends the adapter's own effect, so 2 % of that effect is allowed on top
        (a wrong export, e.g. a swapped A/B or scale, is off by the whole effect)."""
        rounded = self.rounded or self.base_gap > self.tolerance
        slack = QUANTIZED_SLACK * self.adapter_effect if rounded else 0.0
        return self.max_diff <= self.tolerance + self.base_gap + slack

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"self-check {verdict}: max |logit diff| PEFT vs llama.cpp = {self.max_diff:.3g} "
            f"(base alone {self.base_gap:.3g}, adapter moves logits by {self.adapter_effect:.3g}, "
            f"tolerance {self.tolerance:g})"
        )


def self_check(
    model,
    info: BaseInfo,
    adapter: str | Path,
    prompts: list[list[int]],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    rounded: bool = False,
) -> CheckResult:
    """Run base+adapter in llama.cpp and the PEFT model on the same ids and compare logits.

    `rounded`: the adapter stores lora_a as Q8_0 (see write_adapter)."""
    import torch

    prompts = [p for p in prompts if p]
    if not prompts:
        raise ExportError("self-check needs at least one non-empty prompt")
    n_ctx = max(len(p) for p in prompts) + 8
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    peft_logits, hf_logits = [], []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids], device=device)
            peft_logits.append(model(input_ids=x).logits[0].float().cpu().numpy())
            with model.disable_adapter():
                hf_logits.append(model(input_ids=x).logits[0].float().cpu().numpy())
    if was_training:
        model.train()
    with_adapter = _llama_logits(info.path, prompts, n_ctx, adapter)
    bare = _llama_logits(info.path, prompts, n_ctx, None)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(peft_logits, with_adapter, strict=True))
    gap = max(float(np.abs(a - b).max()) for a, b in zip(hf_logits, bare, strict=True))
    effect = max(float(np.abs(a - b).max()) for a, b in zip(peft_logits, hf_logits, strict=True))
    return CheckResult(diff, gap, effect, tolerance, rounded)


def _llama_logits(
    base: Path, prompts: list[list[int]], n_ctx: int, adapter: str | Path | None
) -> list[np.ndarray]:

    # f32 KV cache: the default f16 cache alone costs ~1e-3 of logit precision on tiny models
    kwargs = {"lora_path": str(adapter)} if adapter is not None else {}
    try:
        llm = llama_cpp.Llama(
            model_path=str(base),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            logits_all=True,
            verbose=False,
            type_k=gguf.GGMLQuantizationType.F32,
            type_v=gguf.GGMLQuantizationType.F32,
            **kwargs,
        )
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"llama.cpp cannot load {base.name} with adapter {adapter}: {exc}") from None
    try:
        out = []
        for ids in prompts:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        return out
    finally:
        llm.close()


def _tensor_order(name: str) -> tuple[int, str]:
    return int(name.split(".")[1]), name
