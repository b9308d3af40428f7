"""The process boundary's cost per token: one composite in this process and in a runner, side by side.

    nice python bench/bench_runner.py [--large L.gguf] [--small S.gguf] [--tokens 64] [--reps 3]

Defaults: /work/models qwen2.5-coder-1.5b-instruct.gguf (large) and qwen2.5-coder-0.5b-instruct.gguf
as base and tuned (alpha 1: speed is what is measured, so tuned = base is fine). The two are loaded
at once and run in turns (in-process, runner, runner, in-process, ...), so a shared machine's load hits both
alike; each run is greedy with end tokens banned, so every run makes exactly --tokens tokens.

Reports per side the median tokens/s over the whole stream as its consumer sees it (wall clock
from the first chunk to the last, as a client would), and for the runner the boundary's own cost:
the consumer's wall time per token minus the engine's eval time per token measured inside the
runner (the same stream, so the machine's noise cancels out).
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import threading
import time
from multiprocessing import Pipe
from pathlib import Path

from nanocommander.engine.request.options import merge_sampling
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.engine.runtime.runner.fleet import Fleet

MODELS = Path("/work/models")
PROMPT = (
    "<|im_start|>user\nWrite a Python function that parses an ISO date.<|im_end|>\n<|im_start|>assistant\n"
)


def recipe(large: Path, small: Path, threads: int | None) -> Recipe:
    params = (
        f"parameters: {{num_ctx: 1024, num_parallel: 1{f', num_thread: {threads}' if threads else ''}}}\n"
    )
    return Recipe.parse(
        f"name: bench-runner\nmembers:\n  large: {{path: {large}}}\n  base: {{path: {small}}}\n"
        f"  tuned: {{path: {small}}}\nalpha: 1.0\n{params}",
        check_files=True,
    )


def run(comp, req: GenerateRequest) -> dict[str, float]:
    """One stream: tokens, wall time first chunk -> last, and the engine's own eval time."""
    first = last = None
    n = 0
    stats = None
    for chunk in comp.generate(req):
        now = time.perf_counter()
        first = first or now
        last = now
        n += len(chunk.token_ids)
        stats = chunk.stats or stats
    assert stats is not None and first is not None and last is not None
    wall = last - first
    return {
        "tokens": stats.eval_count,
        "wall_s": wall,
        "eval_s": stats.eval_s,
        "tok_s": (stats.eval_count - 1) / wall,
    }


def transport(chunk, n: int = 5000) -> float:
    """Seconds per chunk for what the boundary adds: pickle, socket write, a reader thread's read and
    unpickle, and the hand-over to the consumer's queue (wire.py's framing, as the runner sends it)."""
    a, b = Pipe()
    got: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        for _ in range(n):
            got.put(b.recv())

    reader = threading.Thread(target=read)
    reader.start()
    t0 = time.perf_counter()
    for i in range(n):
        a.send(("chunk", i, chunk))
        got.get()
    elapsed = time.perf_counter() - t0
    reader.join()
    return elapsed / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--large", type=Path, default=MODELS / "qwen2.5-coder-1.5b-instruct.gguf")
    ap.add_argument("--small", type=Path, default=MODELS / "qwen2.5-coder-0.5b-instruct.gguf")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="num_thread (default: the engine's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    rec = recipe(args.large, args.small, args.threads)
    local = Composite.load(rec, n_parallel=1)
    sampling = merge_sampling({"temperature": 0, "repeat_penalty": 1.0})
    prompt = local.tokenize(PROMPT, add_bos=False)  # ignore_eos: exactly --tokens tokens each run
    req = GenerateRequest(prompt=prompt, sampling=sampling, num_predict=args.tokens, ignore_eos=True)
    fleet = Fleet()
    t0 = time.perf_counter()
    remote = fleet.open(rec, "bench-runner", n_parallel=1)
    runner_load = time.perf_counter() - t0
    try:
        run(local, req)  # warm both: page cache, first-decode allocations
        run(remote, req)
        sides: dict[str, list[dict[str, float]]] = {"in-process": [], "runner": []}
        for i in range(args.reps):  # turns, and which goes first alternates
            for side, comp in ((("in-process", local), ("runner", remote)))[:: 1 if i % 2 == 0 else -1]:
                sides[side].append(run(comp, req))
        rss = remote.runner.rss()
        last_chunk = list(remote.generate(req))[-2]  # a mid-stream chunk (text, token id, no stats)
    finally:
        fleet.stop()
        local.close()

    out: dict[str, object] = {
        "tokens": args.tokens,
        "reps": args.reps,
        "runner_load_s": round(runner_load, 2),
    }
    for side, runs in sides.items():
        out[side] = {
            "tok_s": round(statistics.median(r["tok_s"] for r in runs), 3),  # as the consumer sees it
            "engine_tok_s": round(statistics.median(r["tokens"] / r["eval_s"] for r in runs), 3),
        }
    # the boundary's own cost: what the consumer waited per token beyond the engine's decode
    over = [(r["wall_s"] - r["eval_s"]) / (r["tokens"] - 1) * 1000 for r in sides["runner"]]
    base = [(r["wall_s"] - r["eval_s"]) / (r["tokens"] - 1) * 1000 for r in sides["in-process"]]
    out["runner"]["consumer_minus_engine_ms_per_token"] = round(statistics.median(over), 3)  # type: ignore[index]
    out["in-process"]["consumer_minus_engine_ms_per_token"] = round(statistics.median(base), 3)  # type: ignore[index]
    out["boundary_ms_per_token"] = round(statistics.median(over) - statistics.median(base), 3)
    ratio = out["runner"]["tok_s"] / out["in-process"]["tok_s"]  # type: ignore[index]
    out["runner_vs_in_process_tok_s"] = f"{(ratio - 1) * 100:+.1f} %"
    out["runner_rss_mib"] = rss and round(rss / 2**20)
    out["transport_us_per_chunk"] = round(transport(last_chunk) * 1e6, 1)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
