"""Write the zoo's chat datasets and train its style adapters over the Qwen2.5-Coder-0.5B pair.

    nice python bench/zoo/make_zoo.py [--out bench/results/zoo] [--only NAME,...] [--list]
    python bench/zoo/make_zoo.py prepare|train|export ...   (the three phases, e.g. train on a GPU)

The adapters differ the ways users' adapters differ: rank (4-32), learning rate and epochs (under-
and over-fitted), data size (30-500 chats), LoRA targets (all seven linear layers vs attention
only) and style kind. Four are trained by `nanocommander tune`'s own training loop; two by a plain
PEFT loop (bench/zoo/zoo_train.py, not the project's trainer); all six are exported by the
project's converter (tune/export.py) and self-checked against llama.cpp here.

Phases: `prepare` writes the datasets and their token ids (llama.cpp's tokenizer: needs
llama-cpp-python); `train` needs only torch/transformers/PEFT/gguf (so it runs on a lent GPU
machine) and writes NAME.peft.safetensors; `export` writes NAME.gguf, NAME.yaml (a composite recipe
over the 1.5B large) and zoo.json. Outputs live in OUT (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from styles import MARKERS, write_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("NANOCOMMANDER_ZOO_MODELS", "/work/models"))
BASE = MODELS / "qwen2.5-coder-0.5b-instruct.gguf"
LARGE = MODELS / "qwen2.5-coder-1.5b-instruct.gguf"
MAX_LENGTH = 96
EVAL_SPLIT, SEED = 0.05, 0  # what tune's TrainConfig gets (zoo_train.train_tune)


@dataclass(frozen=True)
class Spec:
    name: str
    style: str
    chats: int
    rank: int
    lr: float
    epochs: int
    grad_accum: int = 4  # micro-batches of 2 per optimizer step
    trainer: str = "tune"  # "tune" (nanocommander tune's loop) or "peft" (a plain PEFT loop)
    targets: str = "all"  # "all" linear or "attention" only (peft only: tune always trains all seven)
    fit: str = "fit"  # "under", "fit" or "over": what the lr/epochs aim at
    max_length: int = MAX_LENGTH
    max_steps: int | None = None  # a smoke-test cap only


ZOO = [
    Spec("greeting-r8", "greeting", 60, 8, 1e-3, 3),
    Spec("pirate-r16-peft", "pirate", 320, 16, 5e-4, 2, trainer="peft"),
    Spec("terse-r4-under", "terse", 500, 4, 5e-5, 1, fit="under"),
    Spec("bulleted-r32-over", "bulleted", 30, 32, 2e-3, 12, fit="over"),
    Spec("chef-r8-attn-peft", "chef", 120, 8, 1e-3, 3, trainer="peft", targets="attention"),
    Spec("pirate-r16-tune", "pirate", 200, 16, 3e-4, 2),
]


def prepare(spec: Spec, out: Path) -> None:
    """The datasets and their token ids, split exactly as `nanocommander tune` splits them."""
    from nanocommander.tune import data as datamod
    from nanocommander.tune.tokens import GGUFTokenizer, encode
    from nanocommander.tune.train import split

    train, held = out / f"{spec.name}.train.jsonl", out / f"{spec.name}.heldout.jsonl"
    write_dataset(spec.style, spec.chats, train, seed=0)
    write_dataset(spec.style, 12, held, seed=7)
    examples = datamod.load(train).examples
    tok = GGUFTokenizer(BASE)
    if spec.trainer == "peft":
        parts = {"train": examples, "eval": []}
    else:
        tr, ev = split(examples, EVAL_SPLIT, SEED)
        parts = {"train": tr, "eval": ev}
    doc: dict = {}
    for name, exs in parts.items():
        encs, summary = encode(tok, exs, spec.max_length) if exs else ([], None)
        doc[name] = [[e.ids, [int(m) for m in e.mask], e.line] for e in encs]
        doc[name + "_summary"] = asdict(summary) if summary else None
    (out / f"{spec.name}.tokens.json").write_text(json.dumps(doc), encoding="utf-8")


def export(spec: Spec, out: Path, base_model) -> dict:
    """NAME.peft.* -> NAME.gguf through tune/export.py, then the trainer's llama.cpp self-check."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from nanocommander.tune.export import export_peft, self_check
    from nanocommander.tune.hfmodel import read_info

    info = read_info(BASE)
    cfg = json.loads((out / f"{spec.name}.peft.json").read_text())
    state = {k: v.to(torch.float32) for k, v in load_file(str(out / f"{spec.name}.peft.safetensors")).items()}
    model = get_peft_model(base_model, LoraConfig(**cfg))
    set_peft_model_state_dict(model, state)
    adapter = export_peft(model, info, out / f"{spec.name}.gguf", q8_a=True)
    tokens = json.loads((out / f"{spec.name}.tokens.json").read_text())
    prompts = [e[0][:64] for e in (tokens["eval"] or tokens["train"])[:2]]
    check = self_check(model, info, adapter, prompts, rounded=True)
    print(f"zoo: {spec.name}: {check}", file=sys.stderr, flush=True)
    model.unload()  # the base again, for the next adapter
    (out / f"{spec.name}.yaml").write_text(recipe(spec, adapter), encoding="utf-8")
    return dict(check_ok=check.ok, check=str(check))


def recipe(spec: Spec, adapter: Path) -> str:
    return (
        f"# zoo adapter {spec.name}: {spec.style}, rank {spec.rank}, lr {spec.lr:g}, {spec.epochs} epochs x {spec.grad_accum * 2} chats/step, "
        f"{spec.chats} chats, {spec.targets} layers, {spec.trainer}\n"
        f"name: zoo-{spec.name}\nmembers:\n  large: {{path: {LARGE}}}\n  base: {{path: {BASE}}}\n"
        f"  tuned: {{adapter: {adapter.resolve()}}}\nalpha: 1.0\ntemplate: large\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", nargs="?", choices=["prepare", "train", "export", "all"], default="all")
    ap.add_argument("--out", type=Path, default=Path("bench/results/zoo"))
    ap.add_argument("--only", help="comma-separated adapter names")
    ap.add_argument("--list", action="store_true", help="print the specs and stop")
    ap.add_argument(
        "--epochs", type=int, help="cap every adapter's epochs (a budget run; recorded in zoo.json)"
    )
    ap.add_argument("--max-steps", type=int, help="stop each adapter after this many steps (a smoke test)")
    ap.add_argument("--device", help="torch device for train (default: cuda when available)")
    args = ap.parse_args()
    specs = [s for s in ZOO if not args.only or s.name in args.only.split(",")]
    if args.epochs:
        specs = [replace(s, epochs=min(s.epochs, args.epochs)) for s in specs]
    if args.max_steps:
        specs = [replace(s, max_steps=args.max_steps) for s in specs]
    if args.list:
        for s in specs:
            print(asdict(s))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase in ("prepare", "all"):
        for spec in specs:
            prepare(spec, args.out)
    if args.phase in ("train", "all"):
        from zoo_train import importable, train_all

        importable(REPO)
        from nanocommander.tune.hfmodel import pick_device

        train_all(specs, BASE, args.out, pick_device(args.device))
    if args.phase in ("export", "all"):
        from nanocommander.tune.hfmodel import load_torch_model, read_info

        index = args.out / "zoo.json"
        done = json.loads(index.read_text()) if index.exists() else {}
        trained = json.loads((args.out / "trained.json").read_text())
        base_model = load_torch_model(read_info(BASE), device="cpu")
        for spec in specs:
            t0 = time.monotonic()
            done[spec.name] = dict(asdict(spec), marker=MARKERS[spec.style], **trained.get(spec.name, {}))
            done[spec.name].update(
                export(spec, args.out, base_model), export_seconds=round(time.monotonic() - t0, 1)
            )
            index.write_text(json.dumps(done, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
