"""`tune --into NAME --from FAMILY`: train on a stored family's base, register NAME into that family."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from tune_helpers import chat_rows, write_jsonl  # noqa: E402

from nanocommander.cli import main  # noqa: E402
from nanocommander.engine.request.recipe import Recipe  # noqa: E402
from nanocommander.registry import Registry  # noqa: E402

FAST = ["--batch-size", "4", "--grad-accum", "1", "--rank", "4", "--lr", "3e-3", "--no-check"]


@pytest.fixture
def store(tmp_path, monkeypatch, write_recipe):
    monkeypatch.setenv("NANOCOMMANDER_MODELS", str(tmp_path / "models"))
    reg = Registry()
    list(reg.create("fam", path=write_recipe(name="fam", tuned="adapter: lora", alpha=0.7)))
    return reg


def test_tune_from_a_family_registers_a_new_member(store, tmp_path, capsys, monkeypatch):
    from nanocommander.tune import calibrate as cal

    monkeypatch.setattr(cal, "BUDGET", cal.Budget(facts=1, open=2, num_predict=4))
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    out = tmp_path / "adapters" / "tea.gguf"
    args = ["tune", "--from", "fam", "--into", "tea", "--data", str(data), "--out", str(out)]
    assert main([*args, "--max-steps", "2", *FAST]) == 0
    err = capsys.readouterr().err
    assert "registered as tea" in err and "wrote steer: into" in err and "the stored tea" in err
    assert (
        store.resolve("tea").steer is not None and store.resolve("fam").steer is None
    )  # calibrated: its own
    fam, tea = store.resolve("fam"), store.resolve("tea")
    assert tea.large.source.path == fam.large.source.path and tea.base.source.path == fam.base.source.path
    assert tea.tuned.adapter.path.read_bytes() == out.read_bytes() and tea.alpha == 0.7
    families = {e.name.model: e.family for e in store.list()}
    assert families["tea"] == families["fam"] is not None
    recipe = Recipe.load(out.parent / "tea.yaml")  # for `eval`: the family's blobs plus the new adapter
    assert recipe.tuned.adapter.path.resolve() == out.resolve()


def test_tune_from_checks_its_arguments_before_training(store, tmp_path, tiny, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    out = str(tmp_path / "x.gguf")
    base = ["tune", "--data", str(data), "--out", out]
    assert main([*base, "--from", "fam", "--into", "x", "--base", str(tiny["base"])]) == 1
    assert "brings its own base" in capsys.readouterr().err
    assert main([*base, "--from", "nope", "--into", "x"]) == 1
    assert "model 'nope:latest' not found" in capsys.readouterr().err
    assert main(base) == 1
    assert "--base BASE.gguf is required" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()
