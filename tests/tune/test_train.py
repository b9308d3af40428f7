"""Training end to end on a tiny llama twin: loss drops, telemetry is written, resume and Ctrl-C work."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from tune_helpers import chat_rows  # noqa: E402

from nanocommander.cli import main  # noqa: E402
from nanocommander.tune import train as trainmod  # noqa: E402
from nanocommander.tune.errors import TrainingError  # noqa: E402

FAST = ["--batch-size", "4", "--grad-accum", "1", "--rank", "4", "--lr", "3e-3"]


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tune(base: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["tune", "--base", str(base), "--data", str(data), "--out", str(out), *FAST, *extra])


def test_training_lowers_loss_and_writes_telemetry(twin, jsonl, tmp_path, capsys):
    _, base = twin("llama")
    out = tmp_path / "run" / "pirate.gguf"
    assert tune(base, jsonl(chat_rows()), out, "--epochs", "2") == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "self-check ok" in captured.err and "OpenAI chat format" in captured.err
    rows = rows_of(out.with_name("pirate.train") / "metrics.jsonl")
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in rows] == list(range(0, 13))  # 22 train examples: 6 steps of <= 4, 2 epochs
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "epoch"} <= set(steps[0])  # logged from step 1
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert rows[0]["step"] == 0 and evals[-1] < 0.5 * evals[0]
    png = out.with_name("pirate.train") / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    types = {t.name.rsplit(".", 1)[-1]: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types == {"lora_a": "Q8_0", "lora_b": "F32"}  # batch-independent kernels (README, batching)


def test_resume_continues_the_same_schedule(twin, jsonl, tmp_path, capsys):
    _, base = twin("llama")
    data, out = jsonl(chat_rows(16)), tmp_path / "r.gguf"
    assert tune(base, data, out, "--max-steps", "2", "--save-every", "1", "--no-check") == 0
    assert tune(base, data, out, "--max-steps", "5", "--resume", "--no-check") == 0
    assert "resumed from" in capsys.readouterr().err
    resumed = rows_of(out.with_name("r.train") / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4, 5]
    # the same five steps in one go give the same losses: the resume replays the schedule exactly
    straight = tmp_path / "s.gguf"
    assert tune(base, data, straight, "--max-steps", "5", "--no-check") == 0
    again = rows_of(straight.with_name("s.train") / "metrics.jsonl")
    assert [r["loss"] for r in resumed[1:]] == pytest.approx([r["loss"] for r in again[1:]], rel=1e-4)
    with pytest.raises(TrainingError, match="other data or settings"):
        trainmod.train(
            trainmod.TrainConfig(
                base=base, data=data, out=out, lr=1e-2, batch_size=4, grad_accum=1, rank=4, resume=True
            )
        )


def test_ctrl_c_saves_a_usable_adapter(twin, jsonl, tmp_path, monkeypatch):
    _, base = twin("llama")
    real, calls = trainmod.nll_sum, []

    def interrupt_on_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # eval at step 0, then steps 1..2, then Ctrl-C during step 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainmod, "nll_sum", interrupt_on_fourth)
    cfg = trainmod.TrainConfig(
        base=base,
        data=jsonl(chat_rows(20)),
        out=tmp_path / "c.gguf",
        batch_size=4,
        grad_accum=1,
        rank=4,
        lr=3e-3,
        eval_split=0.1,
        eval_every=100,
    )
    result = trainmod.train(cfg)
    assert result.interrupted and result.steps == 2
    assert result.check is not None and result.check.ok  # the saved adapter runs in llama.cpp
    state = json.loads((cfg.run_dir / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2


@pytest.mark.parametrize("spike", [10.0, float("nan")])
def test_a_diverging_run_is_stopped(twin, jsonl, tmp_path, monkeypatch, spike):
    # a tiny model saturates instead of diverging even at lr=1000, so the blow-up is injected at step 3
    _, base = twin("llama")
    real, calls = trainmod.nll_sum, []

    def spiking(*args, **kwargs):
        calls.append(1)
        loss, n = real(*args, **kwargs)
        return (loss * spike, n) if len(calls) == 4 else (loss, n)

    monkeypatch.setattr(trainmod, "nll_sum", spiking)
    cfg = trainmod.TrainConfig(
        base=base,
        data=jsonl(chat_rows(16)),
        out=tmp_path / "d.gguf",
        batch_size=4,
        grad_accum=1,
        rank=4,
        lr=1e-3,
        eval_every=100,
    )
    with pytest.raises(TrainingError, match="loss blew up at step 3"):
        trainmod.train(cfg)
    assert not cfg.out.exists()
    assert [r["step"] for r in rows_of(cfg.run_dir / "metrics.jsonl")] == [0, 1, 2, 3]


def test_bad_arguments_fail_clearly(twin, jsonl, tmp_path, tiny):
    _, base = twin("llama")
    data = jsonl(chat_rows(4))
    with pytest.raises(TrainingError, match="must end in .gguf"):
        trainmod.train(trainmod.TrainConfig(base=base, data=data, out=tmp_path / "x.bin"))
    with pytest.raises(TrainingError, match="is a LoRA adapter"):
        trainmod.train(trainmod.TrainConfig(base=tiny["lora"], data=data, out=tmp_path / "x.gguf"))
    assert main(["tune", "--base", str(tmp_path / "nope.gguf"), "--data", str(data), "--out", "x.gguf"]) == 1
    assert main(["tune", "--base", str(base), "--data", str(data), "--out", "x.gguf", "--into", "n"]) == 1


def test_a_padded_batch_scores_each_example_as_if_alone(twin):
    """Right padding needs no attention mask: each example's loss in a batch equals its loss alone."""
    import torch

    from nanocommander.tune.tokens import Encoded

    model, _ = twin("llama")
    short = Encoded(ids=[1, 5, 9, 3], mask=[False, False, True, True], line=1)
    long = Encoded(ids=[1, 7, 2, 8, 4, 6, 11], mask=[False, True, True, True, False, True, True], line=2)
    with torch.no_grad():
        together, n = trainmod.nll_sum(model, [short, long], "cpu")
        alone = [trainmod.nll_sum(model, [e], "cpu") for e in (short, long)]
    assert n == sum(k for _, k in alone) == 7
    assert float(together) == pytest.approx(sum(float(loss) for loss, _ in alone), rel=1e-5)
