"""Are a sequence's logits the same alone and batched with others? Per weight type, on this CPU.

    python bench/batch_numerics.py [--types F32,F16,Q8_0,Q4_0,Q4_1,Q4_K_M,Q6_K] [--no-repack]

Writes a tiny llama model (n_embd 256, so the K-quants apply), quantizes it with llama.cpp's own
quantizer, then decodes four sequences greedily one token at a time, alone (a one-sequence context)
and together (one batch of four per step, teacher-forced on the alone tokens), and reports the
largest logit difference and how often the greedy token differs; then the same for Q4_1 weights
with a LoRA adapter whose lora_a is F32 and Q8_0. --no-repack loads without llama.cpp's repacked CPU
weight layouts (use_extra_bufts off).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
from pathlib import Path

import llama_cpp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import tiny_models  # noqa: E402

from nanocommander.engine.llama.member import Hold, LoadedModel, Member  # noqa: E402

FTYPES = {"F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q4_K_M": 15, "Q6_K": 18}


def compare(path: Path, adapter: Path | None = None, steps: int = 20) -> tuple[float, int, int]:
    model = LoadedModel(path)
    alone = Member("x", model, n_ctx=256, n_seq=1, adapter=adapter)
    together = Member("x", model, n_ctx=256, n_seq=4, adapter=adapter)
    try:
        rng = np.random.default_rng(0)
        prompts = [list(map(int, rng.integers(0, 250, size=n))) for n in (20, 7, 33, 12)]
        ref_logits, ref_tokens = [], []
        for p in prompts:
            alone.reset()
            toks, rows = list(p), []
            for _ in range(steps):
                rows.append(alone.hold([Hold(0, toks)])[0][-1].copy())
                toks.append(int(np.argmax(rows[-1])))
            ref_logits.append(rows)
            ref_tokens.append(toks[len(p) :])
        toks = [list(p) for p in prompts]
        worst, flips = 0.0, 0
        for i in range(steps):
            outs = together.hold([Hold(s, toks[s]) for s in range(4)])
            for s in range(4):
                worst = max(worst, float(np.abs(outs[s][-1] - ref_logits[s][i]).max()))
                flips += int(np.argmax(outs[s][-1])) != ref_tokens[s][i]
                toks[s].append(ref_tokens[s][i])
        return worst, flips, 4 * steps
    finally:
        alone.close()
        together.close()
        model.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="F32,F16,Q8_0,Q4_0,Q4_1,Q4_K_M,Q6_K")
    ap.add_argument("--no-repack", action="store_true")
    args = ap.parse_args()
    if args.no_repack:
        default = llama_cpp.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        llama_cpp.llama_model_default_params = params
    with tempfile.TemporaryDirectory() as tmp:
        shape = tiny_models.Shape(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512)
        src = tiny_models.write_model(Path(tmp) / "f32.gguf", seed=11, shape=shape)
        print(f"{'weights':<8} {'max |batched - alone|':>22} {'greedy flips':>14}")
        for name in args.types.split(","):
            path = src
            if name != "F32":
                path = Path(tmp) / f"{name}.gguf"
                q = llama_cpp.llama_model_quantize_default_params()
                q.ftype = FTYPES[name]
                if (
                    llama_cpp.llama_model_quantize(str(src).encode(), str(path).encode(), ctypes.byref(q))
                    != 0
                ):
                    raise SystemExit(f"cannot quantize to {name}")
            worst, flips, n = compare(path)
            print(f"{name:<8} {worst:>22.3g} {flips:>9} / {n}")
        if "Q4_1" in args.types.split(","):
            for label, q8 in (("F32", False), ("Q8_0", True)):
                lora = tiny_models.write_lora(
                    Path(tmp) / f"lora{q8}.gguf", seed=3, shape=shape, std=0.5, q8_a=q8
                )
                worst, flips, n = compare(Path(tmp) / "Q4_1.gguf", lora)
                print(f"Q4_1 + LoRA, lora_a {label}: {worst:.3g}, {flips} / {n} greedy flips")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
