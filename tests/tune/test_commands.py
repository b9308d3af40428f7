"""The CLI verbs exist without the tune extra and say how to install it."""

from __future__ import annotations

import subprocess
import sys

from nanocommander.cli import build_parser, main


def test_importing_the_commands_does_not_import_torch():
    code = (
        "import sys; import nanocommander.cli as c; c.build_parser(); "
        "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tune_and_eval_are_registered():
    args = build_parser().parse_args(["tune", "--base", "b.gguf", "--data", "d.jsonl", "--out", "a.gguf"])
    assert (args.epochs, args.lr, args.rank, args.lora_alpha, args.max_length) == (3, 1e-4, 16, 32.0, 2048)
    assert args.batch_size * args.grad_accum <= 32  # LoRA degrades with large effective batches
    args = build_parser().parse_args(["eval", "r.yaml", "--data", "d.jsonl", "--alpha", "0.5,1"])
    assert args.func.__name__ == "run_eval"


def test_missing_extra_gives_an_install_hint(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a)
    )
    assert main(["tune", "--base", "b.gguf", "--data", "d.jsonl", "--out", str(tmp_path / "a.gguf")]) == 1
    assert "pip install 'nanocommander[tune]'" in capsys.readouterr().err


def test_eval_rejects_bad_alpha(capsys, tmp_path):
    assert main(["eval", str(tmp_path / "r.yaml"), "--data", "d.jsonl", "--alpha", "half"]) == 1
    assert "--alpha expects numbers" in capsys.readouterr().err
