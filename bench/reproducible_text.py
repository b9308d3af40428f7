"""Does a greedy reply depend on the cache, the batch or speculation? End to end, on real weights.

    nice python bench/reproducible_text.py [--large PATH] [--small PATH] [--tokens N]

Loads a composite (large = Qwen2.5-Coder-1.5B-Instruct Q4_K_M, base = tuned = the 0.5B Q4_K_M, alpha
0.5 unless told) once with the reproducible mode off and once on, and for each prompt compares the
greedy token ids of: a cold run (fresh composite), the same request again (warm cache), the prompt
batched with the three others, and speculative decoding (draft: tuned). Prints, per mode, how many
of the prompts are identical to the cold run in each case, and the decode speed of a lone request
and of the batch of four (tokens per wall second: compare within one run only).
"""

from __future__ import annotations

import argparse
import time

from nanocommander.engine.request.decode_options import parse_speculative
from nanocommander.engine.request.options import SamplingOptions
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite

PROMPTS = [
    "<|im_start|>user\nSuggest a name for a small brown dog.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhy is the sky blue? One paragraph.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nList three uses of a paperclip.<|im_end|>\n<|im_start|>assistant\n",
]
OFF, DRAFT = parse_speculative(False), parse_speculative({"draft": "tuned", "max": 8})


def recipe(large: str, small: str, alpha: float, det: bool) -> Recipe:
    return Recipe.parse(
        f"name: repro\nmembers:\n  large: {{path: {large}}}\n  base: {{path: {small}}}\n"
        f"  tuned: {{path: {small}}}\nalpha: {alpha}\n"
        f"parameters: {{num_ctx: 1024, deterministic: {str(det).lower()}}}\n",
        check_files=True,
    )


def ids(chunks) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def run(args: argparse.Namespace, det: bool) -> dict[str, object]:
    def req(p: str, spec=OFF) -> GenerateRequest:
        return GenerateRequest(
            p, sampling=SamplingOptions(temperature=0), num_predict=args.tokens, speculative=spec
        )

    cold = {}
    for p in PROMPTS:
        comp = Composite.load(recipe(args.large, args.small, args.alpha, det))
        try:
            t0 = time.perf_counter()
            cold[p] = ids(comp.generate(req(p)))
            lone = len(cold[p]) / (time.perf_counter() - t0)
        finally:
            comp.close()
    comp = Composite.load(recipe(args.large, args.small, args.alpha, det))
    try:
        first = {p: ids(comp.generate(req(p))) for p in PROMPTS}
        warm = {p: ids(comp.generate(req(p))) for p in PROMPTS}
        t0 = time.perf_counter()
        batch = [ids(c) for c in comp.generate_batch([req(p) for p in PROMPTS])]
        batch_speed = sum(map(len, batch)) / (time.perf_counter() - t0)
        spec = {p: ids(comp.generate(req(p, DRAFT))) for p in PROMPTS}
    finally:
        comp.close()
    same = lambda got: sum(got[i] == cold[p] for i, p in enumerate(PROMPTS))  # noqa: E731
    return {
        "first on one composite": same([first[p] for p in PROMPTS]),
        "warm (asked again)": same([warm[p] for p in PROMPTS]),
        "batched with 3 others": same(batch),
        "speculative (tuned drafts)": same([spec[p] for p in PROMPTS]),
        "tok/s lone (last prompt)": round(lone, 1),
        "tok/s batch of 4": round(batch_speed, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", default="/work/models/qwen2.5-coder-1.5b-instruct.gguf")
    ap.add_argument("--small", default="/work/models/qwen2.5-coder-0.5b-instruct.gguf")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    rows = {mode: run(args, mode == "deterministic") for mode in ("default", "deterministic")}
    keys = list(rows["default"])
    print(
        f"{'of ' + str(len(PROMPTS)) + ' prompts identical to a cold run':40} {'default':>10} {'deterministic':>14}"
    )
    for k in keys:
        print(f"{k:40} {rows['default'][k]!s:>10} {rows['deterministic'][k]!s:>14}")


if __name__ == "__main__":
    main()
