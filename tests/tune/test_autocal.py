"""`tune --into` and `create --adapter` calibrate the fresh adapter by default, write the chosen
`steer:` and say how long it took; `--no-calibrate` skips it; a failing calibration keeps the adapter."""

from __future__ import annotations

import pytest
import tiny_models
from tune_helpers import chat_rows, write_jsonl

from nanocommander.cli import main
from nanocommander.engine.request.decode_options import RECOMMENDED, Steer
from nanocommander.engine.request.recipe import Recipe
from nanocommander.registry import Registry
from nanocommander.tune import autocal
from nanocommander.tune import calibrate as cal
from nanocommander.tune.errors import TrainingError

FAST = [
    "--batch-size",
    "4",
    "--grad-accum",
    "1",
    "--rank",
    "4",
    "--lr",
    "3e-3",
    "--no-check",
    "--max-steps",
    "1",
]


@pytest.fixture
def small_budget(monkeypatch):
    """Record every calibrate call (its data) and shrink the budget to a few tokens."""
    monkeypatch.setattr(cal, "BUDGET", cal.Budget(facts=1, open=2, num_predict=4))
    calls: list[dict] = []
    real = cal.calibrate

    def spy(recipe, **kw):
        calls.append(kw)
        return real(recipe, **kw)

    monkeypatch.setattr(cal, "calibrate", spy)
    return calls


@pytest.fixture
def store(tmp_path, monkeypatch, write_recipe):
    monkeypatch.setenv("NANOCOMMANDER_MODELS", str(tmp_path / "models"))
    reg = Registry()
    list(
        reg.create("fam", path=write_recipe(name="fam", tuned="adapter: lora", extra="steer: recommended\n"))
    )
    return reg


def _tune(tiny, tmp_path, *extra: str) -> int:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(10))
    out = tmp_path / "adapters" / "tea.gguf"
    args = ["tune", "--base", str(tiny["base"]), "--data", str(data), "--out", str(out)]
    return main([*args, "--into", "tea", "--large", str(tiny["large"]), "--eval-split", "0.3", *FAST, *extra])


def test_tune_into_calibrates_on_its_held_out_chats(tiny, tmp_path, small_budget, capsys):
    assert _tune(tiny, tmp_path) == 0
    err = capsys.readouterr().err
    recipe = tmp_path / "adapters" / "tea.yaml"
    assert (
        "calibrating the steering" in err and "calibrated in" in err and f"wrote steer: into {recipe}" in err
    )
    assert "<- chosen" in err  # the table it chose from
    (call,) = small_budget
    held = call["data"]
    assert (
        held == tmp_path / "adapters" / "tea.train" / "heldout.jsonl"
        and len(held.read_text().splitlines()) == 3
    )
    assert call["n_facts"] == 1 and call["num_predict"] == 4
    assert Recipe.load(recipe).steer is not None and (tmp_path / "adapters" / "tea.gguf").is_file()


def test_tune_into_no_calibrate_keeps_recommended(tiny, tmp_path, small_budget, capsys):
    assert _tune(tiny, tmp_path, "--no-calibrate") == 0
    err = capsys.readouterr().err
    assert "calibrating the steering" not in err and "calibrate skipped" not in err and not small_budget
    assert Recipe.load(tmp_path / "adapters" / "tea.yaml").steer == RECOMMENDED


def test_a_failing_calibration_keeps_the_adapter_and_says_why_in_one_line(write_recipe, tmp_path, capsys):
    recipe = write_recipe(tuned="adapter: lora", name="keep")
    before = recipe.read_text()

    def no_large():
        raise TrainingError("keep.yaml: members.large: file not found")

    outcome = autocal.after_adapter(
        no_large, write=lambda s: "x", later="nanocommander calibrate keep.yaml --write"
    )
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("calibrate skipped")]
    assert outcome.steer is None and len(lines) == 1 and lines[0] == outcome.line
    assert (
        "members.large: file not found" in lines[0]
        and "nanocommander calibrate keep.yaml --write" in lines[0]
    )
    assert recipe.read_text() == before


def test_tune_into_survives_a_failing_calibration(tiny, tmp_path, monkeypatch, capsys):
    def broken(*_a, **_k):
        raise RuntimeError("no large model resolvable")

    monkeypatch.setattr(cal, "calibrate", broken)
    assert _tune(tiny, tmp_path) == 0
    out = capsys.readouterr()
    assert "calibrate skipped: no large model resolvable" in out.err and "Traceback" not in out.err
    assert out.out.strip().endswith("tea.gguf") and (tmp_path / "adapters" / "tea.gguf").is_file()
    assert Recipe.load(tmp_path / "adapters" / "tea.yaml").steer == RECOMMENDED


def test_create_adapter_calibrates_and_stores_the_chosen_steer(store, tmp_path, small_budget, capsys):
    adapter = tiny_models.write_lora(tmp_path / "pirate.gguf", seed=21)
    assert main(["create", "pirate", "--from", "fam", "--adapter", str(adapter)]) == 0
    err = capsys.readouterr().err
    assert "calibrated in" in err and "wrote steer: into the stored pirate" in err
    chosen = store.resolve("pirate").steer
    assert isinstance(chosen, Steer) and small_budget[0]["data"] is None  # no held-out chats: shipped prompts
    assert store.resolve("fam").steer == RECOMMENDED  # the family keeps its own
    families = {e.name.model: e.family for e in store.list()}
    assert families["pirate"] == families["fam"] is not None


def test_create_adapter_no_calibrate_and_a_failing_calibration(store, tmp_path, monkeypatch, capsys):
    adapter = tiny_models.write_lora(tmp_path / "ninja.gguf", seed=22)
    assert main(["create", "ninja", "--from", "fam", "--adapter", str(adapter), "--no-calibrate"]) == 0
    err = capsys.readouterr().err
    assert "calibrating the steering" not in err and store.resolve("ninja").steer == RECOMMENDED

    def broken(*_a, **_k):
        raise TrainingError("the large model is missing")

    monkeypatch.setattr(cal, "calibrate", broken)
    assert main(["create", "ronin", "--from", "fam", "--adapter", str(adapter)]) == 0
    err = capsys.readouterr().err
    assert "calibrate skipped: the large model is missing" in err and "Traceback" not in err
    assert store.resolve("ronin").steer == RECOMMENDED


def test_ctrl_c_during_calibration_keeps_the_member(store, tmp_path, monkeypatch, capsys):
    adapter = tiny_models.write_lora(tmp_path / "ninja.gguf", seed=22)

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cal, "calibrate", interrupted)
    assert main(["create", "ninja", "--from", "fam", "--adapter", str(adapter)]) == 130
    assert "calibrate skipped: interrupted" in capsys.readouterr().err
    assert store.resolve("ninja").steer == RECOMMENDED
