"""The zoo's training step, runnable where llama.cpp is absent (a lent GPU machine).

Tokens come from `make_zoo.py prepare` (the project's GGUFTokenizer, i.e. llama.cpp's own ids, on
this machine); here only torch, transformers, PEFT and gguf are needed. Two trainers:

* "tune": `nanocommander tune`'s own `train()` (tune/train.py), unchanged, with its tokenizer
  replaced by the prepared encodings and its export replaced by saving the PEFT weights; the
  export to GGUF and the llama.cpp self-check run back here (`make_zoo.py export`).
* "peft": a plain PEFT loop written here (AdamW, assistant-token loss, grad accumulation), not
  the project's trainer, so the zoo is not only this project's training code.

Either way OUT/NAME.peft.safetensors (fp16 LoRA weights) + OUT/NAME.peft.json (the LoraConfig)
are what comes back.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import sys
import time
import types
from pathlib import Path

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def importable(repo: Path) -> None:
    """Make `nanocommander.*` importable from a bare checkout, without llama.cpp."""
    sys.modules.setdefault("llama_cpp", types.ModuleType("llama_cpp"))  # tokens.py/export.py import it
    sys.path.insert(0, str(repo))
    import nanocommander

    if str(repo) not in nanocommander.__path__:
        nanocommander.__path__.append(str(repo))  # nanocommander.tune -> repo/tune, as pyproject maps it


def load_encodings(path: Path):
    from nanocommander.tune.tokens import Encoded, Summary

    raw = json.loads(path.read_text())

    def part(name: str):
        encs = [Encoded(ids=e[0], mask=[bool(m) for m in e[1]], line=e[2]) for e in raw[name]]
        return encs, (Summary(**raw[name + "_summary"]) if raw.get(name + "_summary") else None)

    return part("train"), part("eval")


def save_peft(model, out: Path) -> Path:
    """The LoRA weights (fp16) and their config: small enough to bring back."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {k: v.detach().half().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(out.with_suffix(".peft.safetensors")))
    cfg = model.peft_config["default"]
    keep = dict(r=cfg.r, lora_alpha=cfg.lora_alpha, target_modules=sorted(cfg.target_modules))
    keep.update(lora_dropout=cfg.lora_dropout, use_rslora=cfg.use_rslora, bias="none", task_type="CAUSAL_LM")
    out.with_suffix(".peft.json").write_text(json.dumps(keep, indent=1))
    return out.with_suffix(".peft.safetensors")


class BaseCache:
    """One dequantized base for every adapter (each gets a deep copy)."""

    def __init__(self):
        self.model = None

    def __call__(self, info, *, device: str, dtype: str = "float32"):
        from nanocommander.tune.hfmodel import load_torch_model

        if self.model is None:
            self.model = load_torch_model(info, device=device, dtype=dtype)
        return copy.deepcopy(self.model)


def train_tune(spec, base: Path, work: Path, device: str, cache: BaseCache) -> dict:
    """`nanocommander tune`'s train() with prepared tokens; returns its summary figures."""
    import nanocommander.tune.train as trainer

    (train_enc, train_sum), (eval_enc, eval_sum) = load_encodings(work / f"{spec.name}.tokens.json")
    queue = [(train_enc, train_sum), (eval_enc, eval_sum)]
    trainer.GGUFTokenizer = lambda path: None
    trainer.encode = lambda tokenizer, examples, max_length: queue.pop(0)
    trainer.load_torch_model = cache
    trainer._autocast = lambda device: contextlib.nullcontext()  # fp32: bf16 autocast gave NaN grads on CUDA
    trainer.export_peft = lambda model, info, path, q8_a=False: save_peft(model, Path(path))
    cfg = trainer.TrainConfig(
        base=base,
        data=work / f"{spec.name}.train.jsonl",
        out=work / f"{spec.name}.gguf",
        rank=spec.rank,
        alpha=2.0 * spec.rank,
        lr=spec.lr,
        epochs=spec.epochs,
        batch_size=2,
        grad_accum=spec.grad_accum,
        max_length=spec.max_length,
        eval_split=0.05,
        save_every=10_000,
        check=False,
        device=device,
        blowup=10.0,
        max_steps=spec.max_steps,
    )
    r = trainer.train(cfg)
    return dict(
        steps=r.steps,
        first_loss=r.first_loss,
        last_loss=r.last_loss,
        eval_before=r.eval_before,
        eval_after=r.eval_after,
    )


def train_peft(spec, base: Path, work: Path, device: str, cache: BaseCache) -> dict:
    """A plain PEFT loop: shuffled epochs, micro-batches of 2, `grad_accum` of them per step."""
    import torch
    from peft import LoraConfig, get_peft_model

    from nanocommander.tune.hfmodel import TARGETS, read_info

    (enc, _), _ = load_encodings(work / f"{spec.name}.tokens.json")
    torch.manual_seed(0)
    model = get_peft_model(
        cache(read_info(base), device=device),
        LoraConfig(
            r=spec.rank,
            lora_alpha=2 * spec.rank,
            target_modules=ATTENTION if spec.targets == "attention" else list(TARGETS),
            task_type="CAUSAL_LM",
        ),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr)
    model.train()
    rng, steps, first, last = random.Random(0), 0, None, None
    for _epoch in range(spec.epochs):
        if spec.max_steps and steps >= spec.max_steps:
            break
        order = list(range(len(enc)))
        rng.shuffle(order)
        micro = [order[i : i + 2] for i in range(0, len(order), 2)]
        for s in range(0, len(micro), spec.grad_accum):
            group = micro[s : s + spec.grad_accum]
            n = sum(sum(enc[i].mask[1:]) for m in group for i in m)
            total = 0.0
            for m in group:
                batch = [enc[i] for i in m]
                width = max(len(e.ids) for e in batch)
                ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in batch], device=device)
                learn = torch.tensor([e.mask + [False] * (width - len(e.mask)) for e in batch], device=device)
                attn = torch.tensor(
                    [[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch], device=device
                )
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=False):
                    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
                loss = (nll * learn[:, 1:]).sum()
                (loss / n).backward()
                total += loss.item()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            steps, last = steps + 1, total / n
            first = last if first is None else first
            if spec.max_steps and steps >= spec.max_steps:
                break
            print(f"{spec.name} step {steps} loss {last:.3f}", file=sys.stderr, flush=True)
    save_peft(model, work / f"{spec.name}.gguf")
    return dict(steps=steps, first_loss=first, last_loss=last)


def train_all(specs, base: Path, work: Path, device: str) -> dict:
    cache, done = BaseCache(), {}
    for spec in specs:
        t0 = time.monotonic()
        fn = train_peft if spec.trainer == "peft" else train_tune
        done[spec.name] = dict(
            fn(spec, base, work, device, cache), train_seconds=round(time.monotonic() - t0, 1)
        )
        print(f"zoo: {spec.name} trained: {done[spec.name]}", file=sys.stderr, flush=True)
    (work / "trained.json").write_text(json.dumps(done, indent=1))
    return done
