"""Write the zoo's chat datasets and train its style adapters over the Qwen2.5-Coder-0.5B pair.

    nice python bench/zoo/make_zoo.py [--out bench/results/zoo] [--only NAME,...] [--list]

The adapters differ the ways users' adapters differ: rank (4-32), learning rate and steps (under-
and over-fitted), data size (30-500 chats), LoRA targets (all seven linear layers vs attention
only) and style kind. Most are trained with `nanocommander tune`; two with a plain PEFT loop here
(not the project's trainer) exported by the project's converter (tune/export.py), so the zoo is not
only this project's trainer. Outputs (ignored by git): OUT/NAME.gguf, OUT/NAME.train.jsonl,
OUT/NAME.heldout.jsonl, OUT/NAME.yaml (a composite recipe over the 1.5B large) and OUT/zoo.json.
Budgeted for a shared 2-core CPU: short chats, batch 2, at most ~50 optimizer steps each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from styles import MARKERS, write_dataset  # noqa: E402

MODELS = Path("/work/models")
BASE = MODELS / "qwen2.5-coder-0.5b-instruct.gguf"
LARGE = MODELS / "qwen2.5-coder-1.5b-instruct.gguf"
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class Spec:
    name: str
    style: str
    chats: int
    rank: int
    lr: float
    steps: int  # optimizer steps (batch 2)
    trainer: str = "tune"  # "tune" (nanocommander tune) or "peft" (plain PEFT loop + converter)
    targets: str = "all"  # "all" linear or "attention" only (peft only: tune always trains all seven)
    fit: str = "fit"  # "under", "fit" or "over": what the lr/steps aim at


ZOO = [
    Spec("greeting-r8", "greeting", 60, 8, 1e-3, 27),
    Spec("pirate-r16-peft", "pirate", 320, 16, 5e-4, 40, trainer="peft"),
    Spec("terse-r4-under", "terse", 500, 4, 5e-5, 25, fit="under"),
    Spec("bulleted-r32-over", "bulleted", 30, 32, 2e-3, 42, fit="over"),
    Spec("chef-r8-attn-peft", "chef", 120, 8, 1e-3, 30, trainer="peft", targets="attention"),
    Spec("pirate-r16-tune", "pirate", 200, 16, 3e-4, 30),
]


def tune_cli(spec: Spec, data: Path, out: Path) -> None:
    """`nanocommander tune` with the spec's settings (all linear layers, as the trainer always does)."""
    cmd = [sys.executable, "-m", "nanocommander", "tune", "--base", str(BASE), "--data", str(data)]
    cmd += ["--out", str(out), "--rank", str(spec.rank), "--lora-alpha", str(2 * spec.rank)]
    cmd += ["--lr", str(spec.lr), "--epochs", "50", "--max-steps", str(spec.steps), "--batch-size", "2"]
    cmd += ["--grad-accum", "1", "--max-length", "96", "--eval-split", "0.05", "--eval-every", "1000"]
    cmd += ["--save-every", "1000", "--no-check"]
    subprocess.run(cmd, check=True)


def peft_loop(spec: Spec, data: Path, out: Path) -> None:
    """A plain PEFT LoRA loop (AdamW, assistant-token loss), exported by the project's converter."""
    import torch
    from peft import LoraConfig, get_peft_model

    from nanocommander.tune import data as datamod
    from nanocommander.tune.export import export_peft
    from nanocommander.tune.hfmodel import TARGETS, load_torch_model, read_info
    from nanocommander.tune.tokens import GGUFTokenizer, encode

    torch.manual_seed(0)
    info = read_info(BASE)
    enc, _ = encode(GGUFTokenizer(BASE), datamod.load(data).examples, 96)
    model = get_peft_model(
        load_torch_model(info, device="cpu"),
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
    for step in range(spec.steps):
        batch = [enc[(2 * step + i) % len(enc)] for i in range(2)]
        width = max(len(e.ids) for e in batch)
        ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in batch])
        learn = torch.tensor([e.mask + [False] * (width - len(e.mask)) for e in batch])
        attn = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch])
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (nll * learn[:, 1:]).sum() / learn[:, 1:].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        print(f"{spec.name} step {step + 1}/{spec.steps} loss {loss.item():.3f}", file=sys.stderr, flush=True)
    export_peft(model, info, out, q8_a=True)


def recipe(spec: Spec, adapter: Path) -> str:
    return (
        f"# zoo adapter {spec.name}: {spec.style}, rank {spec.rank}, lr {spec.lr:g}, {spec.steps} steps, "
        f"{spec.chats} chats, {spec.targets} layers, {spec.trainer}\n"
        f"name: zoo-{spec.name}\nmembers:\n  large: {{path: {LARGE}}}\n  base: {{path: {BASE}}}\n"
        f"  tuned: {{adapter: {adapter.resolve()}}}\nalpha: 1.0\ntemplate: large\n"
    )


def build(spec: Spec, out: Path) -> dict:
    train, held = out / f"{spec.name}.train.jsonl", out / f"{spec.name}.heldout.jsonl"
    write_dataset(spec.style, spec.chats, train, seed=0)
    write_dataset(spec.style, 12, held, seed=7)
    adapter = out / f"{spec.name}.gguf"
    t0 = time.monotonic()
    if not adapter.exists():
        (peft_loop if spec.trainer == "peft" else tune_cli)(spec, train, adapter)
    (out / f"{spec.name}.yaml").write_text(recipe(spec, adapter), encoding="utf-8")
    return dict(asdict(spec), marker=MARKERS[spec.style], seconds=round(time.monotonic() - t0, 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results/zoo"))
    ap.add_argument("--only", help="comma-separated adapter names")
    ap.add_argument("--list", action="store_true", help="print the specs and stop")
    ap.add_argument(
        "--max-steps", type=int, help="cap every adapter's steps (a budget run; recorded in zoo.json)"
    )
    ap.add_argument("--data-only", action="store_true", help="write the datasets, train nothing")
    args = ap.parse_args()
    specs = [s for s in ZOO if not args.only or s.name in args.only.split(",")]
    if args.max_steps:
        specs = [replace(s, steps=min(s.steps, args.max_steps)) for s in specs]
    if args.list:
        for s in specs:
            print(asdict(s))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    index = args.out / "zoo.json"
    done = json.loads(index.read_text()) if index.exists() else {}
    for spec in specs:
        if args.data_only:
            write_dataset(spec.style, spec.chats, args.out / f"{spec.name}.train.jsonl")
            continue
        done[spec.name] = build(spec, args.out)
        index.write_text(json.dumps(done, indent=2) + "\n", encoding="utf-8")
        print(f"zoo: {spec.name} done in {done[spec.name]['seconds']} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
