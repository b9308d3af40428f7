"""The marker-free style measure and the calibration's choice, on the tiny models and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nanocommander.engine.request.decode_options import RECOMMENDED, Steer
from nanocommander.engine.request.recipe import Recipe
from nanocommander.tune import calibrate as cal
from nanocommander.tune.errors import TrainingError
from nanocommander.tune.style_measure import agreement, fit_threshold, text_ratio


def test_threshold_separates_two_groups():
    m = fit_threshold([0.9, 1.2, 0.7], [0.1, -0.2, 0.3])
    assert 0.3 < m.threshold < 0.7 and m.separation == 1.0
    assert m.styled(0.8) and not m.styled(0.2) and not m.styled(math.nan)


def test_threshold_of_overlapping_groups_keeps_the_most_on_their_side():
    m = fit_threshold([0.5, 0.6, 0.05], [0.0, 0.1, 0.2])
    assert 0.2 < m.threshold < 0.5 and m.separation == pytest.approx(5 / 6)


def test_threshold_needs_both_groups():
    with pytest.raises(ValueError):
        fit_threshold([1.0], [math.nan])


def test_agreement():
    assert agreement([True, False, True], [True, True, True]) == pytest.approx(2 / 3)


def _row(label, correct, styled, member="composite", steer=None):
    r = cal.Row(label, member, steer, correct=correct, asked=10, styled=styled, open=6)
    return r


def test_choose_takes_the_most_styled_setting_that_keeps_the_facts():
    rows = [
        _row("large", 10, 0, "large"),
        _row("tuned", 5, 6, "tuned"),
        _row("proxy", 9, 6),  # 90 % of large: loses facts
        _row("rec", 10, 2),
        _row("rel", 10, 5),
        _row("rel2", 10, 5),  # a tie goes to the earlier row
    ]
    assert cal.choose(rows).label == "rel"
    assert cal.choose(rows, keep=0.9).label == "proxy"


def test_choose_falls_back_to_the_most_accurate():
    rows = [_row("large", 10, 0, "large"), _row("a", 5, 6), _row("b", 8, 1)]
    assert cal.choose(rows).label == "b"
    with pytest.raises(TrainingError):
        cal.choose([_row("a", 5, 6)])


def test_rejection_margins_and_relative_settings():
    large = np.array([[5.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    tuned = np.array([[1.0, 4.0, 0.0], [0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    margins = cal.rejection_margins(large, tuned, 3)
    assert margins == [3.0, 2.0]  # row 2: the two agree, no margin
    settings = cal.relative_settings([1.0, 2.0, 3.0, 4.0, 5.0])
    assert [s.reject for s in settings] == [2.0, 3.0]
    assert all(s.mode == RECOMMENDED.mode and s.sentences for s in settings)
    assert cal.relative_settings([]) == []


def test_write_steer_changes_only_the_steer_key(write_recipe):
    text = None
    path = write_recipe(extra="# keep me\nsteer: recommended\nsystem: hi  # and me\n")
    before = path.read_text()
    cal.write_steer(path, Steer("nudge", reject=2.5, word=True))
    after = path.read_text()
    text = after
    assert "# keep me" in text and "system: hi  # and me" in text
    assert [line for line in before.splitlines() if not line.startswith("steer:")] == [
        line for line in after.splitlines() if not line.startswith("steer:")
    ]
    assert Recipe.load(path).steer == Steer("nudge", reject=2.5, word=True)
    path2 = write_recipe(name="nosteer")
    cal.write_steer(path2, RECOMMENDED)
    assert Recipe.load(path2).steer == RECOMMENDED


def test_calibrate_needs_an_adapter(write_recipe):
    with pytest.raises(TrainingError, match="adapter"):
        cal.calibrate(write_recipe())


def test_calibrate_bad_recipe_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmembers:\n  base: {path: /nope.gguf}\n")
    with pytest.raises(TrainingError) as err:
        cal.calibrate(bad)
    assert "\n" not in str(err.value)


def test_empty_data_is_a_clear_error(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(Exception, match="e.jsonl"):
        cal.prompts_from(empty, 6)


@pytest.fixture
def adapter_comp(write_recipe):
    from nanocommander.engine.runtime.composite import Composite

    comp = Composite.load(Recipe.load(write_recipe(tuned="adapter: lora", name="ad")))
    yield comp
    comp.close()


def test_measure_separates_tuned_replies_from_base_replies(adapter_comp):
    """Fails if the ratio were a constant (or ignored which model wrote the reply)."""
    comp = adapter_comp
    prompts = ["hello there", "tell me a story", "what is up", "count to five"]
    chat = [comp.chat_prompt([{"role": "user", "content": p}], num_predict=12) for p in prompts]
    tuned_row, base_row = cal.Row("tuned", "tuned"), cal.Row("base", "base")
    cal.run(comp, [tuned_row, base_row], [], prompts, 12)
    assert len(set(tuned_row.ratios + base_row.ratios)) > 1
    assert np.mean(tuned_row.ratios) > np.mean(base_row.ratios)
    m = fit_threshold(tuned_row.ratios, base_row.ratios)
    assert m.separation >= 0.75
    assert sum(m.styled(x) for x in tuned_row.ratios) > sum(m.styled(x) for x in base_row.ratios)
    # the ratio of the same text is the same whichever model wrote it
    assert text_ratio(comp, chat[0], tuned_row.replies[0]) == pytest.approx(tuned_row.ratios[0])


def test_eval_sweep_reports_the_measure_next_to_the_marker(write_recipe, tmp_path):
    from nanocommander.tune.sweep import sweep

    general = tmp_path / "g.jsonl"
    general.write_text("\n".join(f'{{"question": "q{i}?", "answers": ["a"]}}' for i in range(4)) + "\n")
    report = sweep(
        write_recipe(tuned="adapter: lora", name="sw"),
        data=None,
        general=general,
        alphas=[None],
        run_grid=False,
        num_predict=8,
        progress=False,
        marker="a",
        measure=True,
    )
    by = {s.label: s for s in report.settings}
    assert "measured" in report.table() and any("measured:" in n for n in report.notes)
    assert all(len(s.ratios) == 4 for s in report.settings)
    assert by["tuned"].measured > by["base"].measured
    assert report.to_dict()["settings"][1]["measured_fraction"] is not None


@pytest.mark.timeout(900)  # ~16 generations and ratio scorings on the tiny models: slow on a shared CPU
def test_calibrate_cli_writes_a_recipe_that_loads(write_recipe, tmp_path, capsys):
    from nanocommander.cli.tune import run_calibrate

    path = write_recipe(tuned="adapter: lora", name="cal", extra="# mine\n")
    general = tmp_path / "g.jsonl"
    general.write_text('{"question": "q?", "answers": ["a"]}\n{"question": "r?", "answers": ["b"]}\n')
    args = type("A", (), {})()
    args.__dict__.update(
        recipe=path, data=None, general=general, facts=1, open=2, num_predict=4, style_marker=None,
        write=True, json=tmp_path / "c.json",
    )  # fmt: skip
    assert run_calibrate(args) == 0
    out = capsys.readouterr()
    assert "<- chosen" in out.out and "calibrated in" in out.err
    assert "# mine" in path.read_text() and "steer:" in path.read_text()
    assert Recipe.load(path).steer is not None


def test_an_equally_styled_cheaper_rule_wins_over_proxy():
    """One member less where possible: nudge (large + a lazy tuned) before proxy (all three, every token)."""
    nudge = Steer("nudge", reject=2.0, sentences=True)
    rows = [
        _row("large", 10, 0, "large"),
        _row("proxy", 10, 6, steer=Steer()),
        _row("gated", 10, 6, steer=Steer("gated", reject=2.0, sentences=True)),
        _row("nudge", 10, 6, steer=nudge),
        _row("more styled proxy", 10, 6, steer=Steer()),
    ]
    assert cal.choose(rows).label == "nudge"
    assert cal.cheapness(Steer("gated", reject=2.0)) == cal.cheapness(Steer()) == 0  # an always-open gate
    rows[2].styled = rows[3].styled = 5  # style first: a cheaper rule never wins by styling fewer
    assert cal.choose(rows).label == "proxy"


def test_a_broken_adapter_gets_a_refusal_not_a_steer():
    """When no setting keeps the facts (a diverged adapter), calibrate says so and writes nothing."""
    rows = [_row("large", 10, 0, "large"), _row("tuned", 0, 6, "tuned"), _row("proxy", 0, 6, steer=Steer())]
    chosen = cal.choose(rows)
    line = cal.no_setting_keeps_facts(rows, chosen)
    assert line and "keeps 95% of the large model's facts" in line and "tuned model alone 0/10" in line
    rows[2].correct = 10
    assert cal.no_setting_keeps_facts(rows, cal.choose(rows)) is None


def test_a_failed_write_leaves_the_recipe_as_it_was(tmp_path, monkeypatch):
    from pathlib import Path

    path = tmp_path / "r.yaml"
    path.write_text("name: r  # mine\nsteer: proxy\n", encoding="utf-8")
    real = Path.write_text

    def full_disk(self, text, *a, **k):
        if self.name.endswith(".tmp"):
            real(self, text[:5], *a, **k)
            raise OSError("No space left on device")
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        cal.write_steer(path, RECOMMENDED)
    assert path.read_text() == "name: r  # mine\nsteer: proxy\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.yaml"]
