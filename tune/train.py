"""LoRA SFT of a GGUF base, exported as a llama.cpp adapter.

A plain torch loop, because every choice here is a default worth seeing: LoRA on
all seven linear projections (rank 16, alpha 32), loss on assistant tokens only,
averaged per token over each effective batch, constant LR with no warmup, small
effective batches (LoRA degrades above ~32), grad-norm clipping at 1. The whole
step schedule is fixed by the seed up front, so a resumed run replays the same
batches from its checkpoint. A diverging loss stops the run; Ctrl-C saves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nanocommander.tune import data as datamod
from nanocommander.tune.errors import TrainingError
from nanocommander.tune.export import CheckResult, export_peft, self_check
from nanocommander.tune.hfmodel import TARGETS, load_torch_model, pick_device, read_info
from nanocommander.tune.telemetry import MetricsLog, plot
from nanocommander.tune.tokens import Encoded, GGUFTokenizer, encode


@dataclass
class TrainConfig:
    base: Path
    data: Path
    out: Path
    format: str | None = None
    epochs: int = 3
    lr: float = 1e-4
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    rslora: bool = False
    max_length: int = 2048
    eval_split: float = 0.1
    batch_size: int = 2
    grad_accum: int = 8
    max_steps: int | None = None
    eval_every: int | None = None  # default: four times per epoch
    save_every: int = 50
    seed: int = 0
    resume: bool = False
    device: str | None = None
    skip_bad: bool = False
    check: bool = True
    check_tolerance: float = 1e-2
    lora_a: str = "q8_0"  # lora_a tensor type in the exported adapter: "q8_0" or "f32" (tune/export.py)
    blowup: float = 3.0  # stop when loss exceeds this multiple of the first step's

    @property
    def run_dir(self) -> Path:
        return self.out.with_name(self.out.stem + ".train")

    def fingerprint(self) -> str:
        """What must not change between a run and its resume: data, base and optimisation settings."""
        keep = {k: str(getattr(self, k)) for k in _FINGERPRINT}
        keep["data_sha"] = hashlib.sha256(self.data.read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


# Settings that fix the step schedule and the optimisation; epochs and max_steps may grow on resume.
_FINGERPRINT = (
    "base",
    "format",
    "lr",
    "rank",
    "alpha",
    "dropout",
    "rslora",
    "max_length",
    "eval_split",
    "batch_size",
    "grad_accum",
    "seed",
)


@dataclass
class TrainResult:
    adapter: Path
    metrics: Path
    plot: Path
    steps: int
    first_loss: float | None
    last_loss: float | None
    eval_before: float | None
    eval_after: float | None
    check: CheckResult | None = None
    interrupted: bool = False
    summary: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval), eval being a seeded random `fraction` (at least one if any, never all)."""
    if not 0 <= fraction < 1:
        raise TrainingError("--eval-split must be in [0, 1)")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    k = min(len(items) - 1, max(1, round(len(items) * fraction))) if fraction > 0 and len(items) > 1 else 0
    return [items[i] for i in order[k:]], [items[i] for i in order[:k]]


def schedule(n: int, cfg: TrainConfig) -> list[list[list[int]]]:
    """Every optimizer step's micro-batches (lists of example indices), for all epochs."""
    steps = []
    for epoch in range(cfg.epochs):
        order = list(range(n))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        micro = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        steps += [micro[i : i + cfg.grad_accum] for i in range(0, len(micro), cfg.grad_accum)]
    return steps[: cfg.max_steps] if cfg.max_steps else steps


def collate(batch: list[Encoded], device: str):
    """Right-padded ids and the learned-token mask. No attention mask: with right padding and a
    causal model a real token only ever attends to real tokens before it, so none is needed; and an
    attention mask makes the padding's own query rows fully masked, whose softmax is NaN in bf16
    (seen on CUDA: grad norm NaN at step 1), which the backward pass spreads to every weight."""
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, e in enumerate(batch):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids)] = torch.tensor(e.mask)
    return ids.to(device), mask.to(device)


def nll_sum(model, batch: list[Encoded], device: str):
    """Summed negative log-likelihood of the learned tokens, and how many there were."""
    import torch.nn.functional as F

    ids, mask = collate(batch, device)
    with _autocast(device):
        logits = model(input_ids=ids).logits
    target_mask = mask[:, 1:]
    count = int(target_mask.sum().item())
    if count == 0:
        return logits.sum() * 0.0, 0
    picked = logits[:, :-1][target_mask].float()
    return F.cross_entropy(picked, ids[:, 1:][target_mask], reduction="sum"), count


def evaluate(model, examples: list[Encoded], cfg: TrainConfig, device: str) -> float | None:
    if not examples:
        return None
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), cfg.batch_size):
            loss, n = nll_sum(model, examples[i : i + cfg.batch_size], device)
            total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


def train(cfg: TrainConfig) -> TrainResult:
    """Run the whole tune: data, model, loop, export and self-check.

    Long on purpose: the training loop reads top to bottom as the recipe in docs/adapters.md (data, model,
    loop, export, self-check); its pieces share the model and optimizer state.
    """
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    if cfg.rank < 1 or cfg.epochs < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.lr <= 0:
        raise TrainingError("--rank, --epochs, --batch-size and --grad-accum must be >= 1 and --lr > 0")
    if cfg.out.suffix != ".gguf":
        raise TrainingError(f"--out must end in .gguf: {cfg.out}")
    info = read_info(cfg.base)
    dataset = datamod.load(cfg.data, fmt=cfg.format, skip_bad=cfg.skip_bad)
    for line, problem in dataset.bad:
        log(f"skipped {cfg.data}:{line}: {problem}")
    tokenizer = GGUFTokenizer(cfg.base)
    train_ex, eval_ex = split(dataset.examples, cfg.eval_split, cfg.seed)
    train_enc, summary = encode(tokenizer, train_ex, cfg.max_length)
    eval_enc, eval_summary = encode(tokenizer, eval_ex, cfg.max_length) if eval_ex else ([], None)
    if not train_enc:
        raise TrainingError("no training example has an assistant token left to learn")
    log(f"data: {datamod.FORMAT_NAMES[dataset.format]} format; train: {summary}")
    if eval_summary:
        log(f"eval: {eval_summary}")

    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model = load_torch_model(info, device=device)
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        use_rslora=cfg.rslora,
        target_modules=list(TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    plan = schedule(len(train_enc), cfg)
    per_epoch = math.ceil(math.ceil(len(train_enc) / cfg.batch_size) / cfg.grad_accum)
    eval_every = cfg.eval_every or max(1, per_epoch // 4)

    run_dir = cfg.run_dir
    ckpt = run_dir / "checkpoint"
    start = 0
    fingerprint = cfg.fingerprint()
    if cfg.resume:
        start = _load_checkpoint(ckpt, fingerprint, model, optimizer, set_peft_model_state_dict)
        log(f"resumed from {ckpt} at step {start}/{len(plan)}")
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=start if cfg.resume else None)
    first_loss = next((r["loss"] for r in metrics.rows if isinstance(r.get("loss"), float)), None)
    eval_before = next(
        (r["eval_loss"] for r in metrics.rows if r.get("step") == 0 and "eval_loss" in r), None
    )
    if start == 0:
        eval_before = evaluate(model, eval_enc, cfg, device)
        metrics.log(step=0, epoch=0.0, eval_loss=eval_before)
    last_loss, last_eval, interrupted = None, eval_before, False
    model.train()
    bar = tqdm(total=len(plan), initial=start, desc="tune", unit="step", file=sys.stderr, dynamic_ncols=True)
    try:
        for step in range(start + 1, len(plan) + 1):
            t0 = time.perf_counter()
            groups = [[train_enc[i] for i in micro] for micro in plan[step - 1]]
            n_learned = sum(sum(e.mask[1:]) for g in groups for e in g)
            total = 0.0
            for group in groups:
                loss, _ = nll_sum(model, group, device)
                (loss / n_learned).backward()
                total += loss.item()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last_loss = total / n_learned
            tokens = sum(len(e.ids) for g in groups for e in g)
            rate = tokens / max(time.perf_counter() - t0, 1e-9)
            first_loss = first_loss if first_loss is not None else last_loss
            row: dict[str, Any] = dict(
                step=step,
                epoch=step / per_epoch,
                loss=last_loss,
                grad_norm=grad_norm,
                lr=cfg.lr,
                tokens_per_s=rate,
            )
            if step % eval_every == 0 or step % per_epoch == 0 or step == len(plan):
                row["eval_loss"] = last_eval = evaluate(model, eval_enc, cfg, device)
            metrics.log(**row)
            bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{rate:.0f}")
            bar.update(1)
            if (
                not math.isfinite(last_loss)
                or not math.isfinite(grad_norm)
                or last_loss > cfg.blowup * first_loss
            ):
                raise TrainingError(
                    f"loss blew up at step {step}: {last_loss:.4g} (first step {first_loss:.4g}, "
                    f"grad norm {grad_norm:.3g}); lower --lr and retry. Metrics: {metrics.path}"
                )
            if step % cfg.save_every == 0 or step % per_epoch == 0:
                _save_checkpoint(ckpt, fingerprint, step, model, optimizer)
    except KeyboardInterrupt:
        interrupted = True
        step = max(r["step"] for r in metrics.rows)
        log(f"\ninterrupted at step {step}: saving a checkpoint and a usable adapter (resume with --resume)")
        _save_checkpoint(ckpt, fingerprint, step, model, optimizer)
    finally:
        bar.close()
        try:
            plot(metrics.path, run_dir / "loss.png", title=f"{cfg.out.name}: LoRA r={cfg.rank} lr={cfg.lr:g}")
        except Exception as exc:  # a plot must never lose a finished run
            log(f"could not draw the plot: {exc}")
    if not interrupted:
        _save_checkpoint(ckpt, fingerprint, len(plan), model, optimizer)
    adapter = export_peft(model, info, cfg.out, q8_a=cfg.lora_a == "q8_0")
    log(f"adapter written: {adapter}")
    check = None
    if cfg.check:
        prompts = [e.ids[:128] for e in (eval_enc or train_enc)[:3]]
        check = self_check(
            model, info, adapter, prompts, tolerance=cfg.check_tolerance, rounded=cfg.lora_a == "q8_0"
        )
        log(str(check))
    metrics.close(params={k: v for k, v in asdict(cfg).items()}, artifacts=[run_dir / "loss.png", adapter])
    final_step = max(r["step"] for r in metrics.rows)
    result = TrainResult(
        adapter,
        metrics.path,
        run_dir / "loss.png",
        final_step,
        first_loss,
        last_loss,
        eval_before,
        last_eval,
        check,
        interrupted,
        str(summary),
    )
    if check is not None and not check.ok:
        raise TrainingError(
            f"{check}; the adapter at {adapter} does not reproduce the trained model in llama.cpp"
        )
    return result


def _autocast(device: str):

    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _save_checkpoint(path: Path, fingerprint: str, step: int, model, optimizer) -> None:
    """Adapter weights, optimizer state and step, written to a temp folder then swapped in."""

    import torch
    from peft import get_peft_model_state_dict

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {"lora": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict()}, tmp / "state.pt"
    )
    (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint}))
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, fingerprint: str, model, optimizer, set_state) -> int:
    import torch

    try:
        meta = json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        raise TrainingError(f"no checkpoint to resume from at {path}") from None
    if meta.get("fingerprint") != fingerprint:
        raise TrainingError(f"{path} was made with other data or settings; drop --resume to start over")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    set_state(model, state["lora"])
    optimizer.load_state_dict(state["optimizer"])
    return int(meta["step"])
