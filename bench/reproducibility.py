"""Where does a position's logits depend on how it was computed? llama.cpp directly, on this CPU.

    nice python bench/reproducibility.py [--model PATH] [--settings NAME,...] [--prompt-tokens N]

For each setting (context / model parameters) the same position is evaluated four ways and compared
with the first (the whole prompt in one llama_decode):
  prefix+1   the prompt minus its last token, then that token alone (what a warm cache does);
  batch of 4 the prompt together with three other prompts in one llama_decode (what batching does);
  1 thread   the whole prompt again with one thread instead of two;
  decode x4  8 greedy steps after the prompt, alone (one token per decode) and teacher-forced beside
             three other sequences decoding in the same llama_decode (what batched decoding does).
Prints the largest |logit difference| of each against the reference, and the prompt speed (whole
prompt) and decode speed (one sequence) with one thread, in tokens per CPU-second of this process: on
a shared machine wall-clock speeds swing with the load, two spinning threads most of all. Compare
speeds within a run only.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import llama_cpp
import numpy as np
from llama_cpp import _internals

from nanocommander.engine.llama import log as llamalog

MODEL = "/work/models/qwen2.5-coder-1.5b-instruct.gguf"
TEXT = (
    "<|im_start|>system\nYou are a careful assistant who answers in plain English.<|im_end|>\n"
    "<|im_start|>user\nMy neighbour just adopted a small, brown, very energetic dog from the shelter "
    "down the road. She asked me to help her pick a name that is short, easy to call across a park "
    "and not too common. What would you suggest, and why? Give two or three options.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
OTHERS = [
    "def fibonacci(n):\n    ",
    "The capital of France is",
    "<|im_start|>user\nWrite a haiku about autumn rain.<|im_end|>\n<|im_start|>assistant\n",
]
F16, F32, Q8_0 = 1, 0, 8
OFF = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
TAIL = 5  # prompt positions compared after a prefix (5: every row offset of a 4-row kernel)


@dataclass
class Setting:
    name: str
    n_ubatch: int = 512
    flash: int = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
    kv: int = F16
    repack: bool = True
    threads: int = 2
    ctx: dict = field(default_factory=dict)


SETTINGS = {
    s.name: s
    for s in [
        Setting("default (ubatch 512)"),
        Setting("ubatch 64", n_ubatch=64),
        Setting("ubatch 8", n_ubatch=8),
        Setting("ubatch 4", n_ubatch=4),
        Setting("ubatch 2", n_ubatch=2),
        Setting("ubatch 1", n_ubatch=1),
        Setting("no repack", repack=False),
        Setting("flash attn off", flash=OFF),
        Setting("flash attn on", flash=llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED),
        Setting("KV f32, flash off", kv=F32, flash=OFF),
        Setting("no repack, flash off", repack=False, flash=OFF),
        Setting("no repack, KV f32, flash off", repack=False, kv=F32, flash=OFF),
        Setting("ubatch 1, no repack", n_ubatch=1, repack=False),
        *[
            Setting(f"no repack, flash off, ubatch {n}", n_ubatch=n, repack=False, flash=OFF)
            for n in (4, 8, 16, 32, 64)
        ],
        *[Setting(f"flash off, ubatch {n}", n_ubatch=n, flash=OFF) for n in (4, 8, 16, 32, 64)],
        Setting("ubatch 1, flash off", n_ubatch=1, flash=OFF),
        Setting("ubatch 1, KV f32, flash off", n_ubatch=1, kv=F32, flash=OFF),
    ]
}


class Run:
    """One context (4 sequences in separate streams) over a loaded model, with a reusable batch."""

    def __init__(self, model: _internals.LlamaModel, s: Setting, n_ctx: int = 512):
        p = llama_cpp.llama_context_default_params()
        p.n_ctx, p.n_seq_max, p.kv_unified = n_ctx * 4, 4, False
        p.n_batch, p.n_ubatch = 2048, s.n_ubatch
        p.flash_attn_type = s.flash
        p.type_k = p.type_v = s.kv
        p.n_threads = p.n_threads_batch = s.threads
        p.no_perf = True
        for k, v in s.ctx.items():
            setattr(p, k, v)
        self.threads = s.threads
        self.ctx = _internals.LlamaContext(model=model, params=p, verbose=False)
        self.n_vocab = model.n_vocab()
        self.mem = llama_cpp.llama_get_memory(self.ctx.ctx)
        self.batch = llama_cpp.llama_batch_init(2048, 0, 1)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> list[np.ndarray]:
        """entries: (seq, pos, token, want logits); returns the wanted rows, in order."""
        b = self.batch
        b.n_tokens = len(entries)
        for j, (seq, pos, tok, out) in enumerate(entries):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, pos, 1, out
            b.seq_id[j][0] = seq
        if llama_cpp.llama_decode(self.ctx.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        rows = []
        for j, e in enumerate(entries):
            if e[3]:
                ptr = llama_cpp.llama_get_logits_ith(self.ctx.ctx, j)
                rows.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())
        return rows

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.mem, True)

    def threads_to(self, n: int) -> None:
        llama_cpp.llama_set_n_threads(self.ctx.ctx, n, n)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        self.ctx.close()


def prompt_entries(
    seq: int, toks: list[int], start: int = 0, every: bool = False
) -> list[tuple[int, int, int, bool]]:
    return [(seq, p, toks[p], every or p == len(toks) - 1) for p in range(start, len(toks))]


def diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def measure(model: _internals.LlamaModel, s: Setting, prompt: list[int], others: list[list[int]], steps: int):
    """The reference is the whole prompt in one llama_decode with the logits of every position."""
    run = Run(model, s)
    try:
        run.clear()
        run.decode(prompt_entries(0, prompt[:16]))  # warm-up (page in the weights)
        run.clear()
        ref = run.decode(prompt_entries(0, prompt, every=True))
        # greedy decode alone, one token per step
        toks, alone = list(prompt), []
        nxt = int(np.argmax(ref[-1]))
        for _ in range(steps):
            toks.append(nxt)
            alone.append(run.decode([(0, len(toks) - 1, nxt, True)])[0])
            nxt = int(np.argmax(alone[-1]))
        # a prefix, then the last TAIL prompt tokens one at a time (a warm cache, +1 token each)
        run.clear()
        cut = len(prompt) - TAIL
        run.decode([(0, p, prompt[p], False) for p in range(cut)])
        pre = [run.decode([(0, p, prompt[p], True)])[0] for p in range(cut, len(prompt))]
        # in a batch of four prompts (every position of the first)
        run.clear()
        entries = prompt_entries(0, prompt, every=True)
        for i, o in enumerate(others, 1):
            entries += prompt_entries(i, o)
        bat = run.decode(entries)[: len(prompt)]
        # decoding beside three others, teacher-forced on the alone tokens
        seqs = [list(prompt)] + [list(o) for o in others]
        dec = []
        for i in range(steps):
            step = []
            for q, sq in enumerate(seqs):
                sq.append(toks[len(prompt) + i] if q == 0 else sq[-1])
                step.append((q, len(sq) - 1, sq[-1], True))
            dec.append(run.decode(step)[0])
        # one thread: the same prompt and decode steps again, timed in CPU seconds of this process
        # (a shared machine's load distorts wall-clock speeds, and spinning threads most of all)
        run.clear()
        run.threads_to(1)
        t = time.process_time()
        one = run.decode(prompt_entries(0, prompt))
        t_prompt = time.process_time() - t
        t = time.process_time()
        for i in range(steps):
            one += run.decode([(0, len(prompt) + i, toks[len(prompt) + i], True)])
        t_dec = time.process_time() - t
        return {
            "prefix+1": diff(pre, ref[cut:]),
            "batch of 4": diff(bat, ref),
            "decode x4": diff(dec, alone),
            "1 thread": diff(one, [ref[-1], *alone]),
            "prompt tok/s": len(prompt) / t_prompt,
            "decode tok/s": steps / t_dec,
            "ref": ref,
        }
    finally:
        run.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--settings", default=";".join(SETTINGS), help="names separated by ;, see SETTINGS")
    ap.add_argument("--prompt-tokens", type=int, default=0, help="cut the prompt to N tokens (0: all)")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    llamalog.install()  # llama.cpp's chatter only with NANOCOMMANDER_DEBUG
    llama_cpp.llama_backend_init()
    models: dict[bool, _internals.LlamaModel] = {}

    def load(repack: bool) -> _internals.LlamaModel:
        if repack not in models:
            mp = llama_cpp.llama_model_default_params()
            mp.use_extra_bufts = repack
            models[repack] = _internals.LlamaModel(path_model=args.model, params=mp, verbose=False)
        return models[repack]

    first = load(True)
    prompt = first.tokenize(TEXT.encode(), add_bos=False, special=True)
    if args.prompt_tokens:
        prompt = prompt[: args.prompt_tokens]
    others = [first.tokenize(t.encode(), add_bos=False, special=True) for t in OTHERS]
    print(f"model {args.model}, prompt {len(prompt)} tokens, {args.steps} decode steps")
    print(llama_cpp.llama_print_system_info().decode().strip())
    cols = ["prefix+1", "batch of 4", "decode x4", "1 thread", "prompt tok/s", "decode tok/s"]
    print(f"{'setting':<30}" + "".join(f"{c:>13}" for c in cols) + f"{'vs ubatch 1':>13}")
    refs: dict[str, np.ndarray] = {}
    for name in args.settings.split(";"):
        s = SETTINGS[name.strip()]
        r = measure(load(s.repack), s, prompt, others, args.steps)
        refs[s.name] = r["ref"]
        base = refs.get("ubatch 1")
        cross = f"{diff(r['ref'], base):>13.3g}" if base is not None else f"{'':>13}"
        print(
            f"{s.name:<30}"
            + "".join(f"{r[c]:>13.3g}" if "tok/s" not in c else f"{r[c]:>13.1f}" for c in cols)
            + cross,
            flush=True,
        )
    for m in models.values():
        m.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
