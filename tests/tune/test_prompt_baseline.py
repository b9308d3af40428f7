"""`eval --prompt-baseline`: a row of the large model alone with a style instruction, scored like the rest."""

from __future__ import annotations

import json

import pytest
from tune_helpers import chat_rows, write_jsonl

from nanocommander.engine.runtime.composite import Composite
from nanocommander.tune import prompted
from nanocommander.tune.data import Example
from nanocommander.tune.errors import DataError
from nanocommander.tune.sweep import sweep

PIRATE = "Talk like a pirate"


@pytest.fixture
def seen(monkeypatch):
    """Every request the composite generates during a test."""
    requests = []
    generate = Composite.generate

    def spy(self, req, cancel=None):
        requests.append(req)
        return generate(self, req, cancel)

    monkeypatch.setattr(Composite, "generate", spy)
    return requests


@pytest.fixture
def general(tmp_path):
    return write_jsonl(
        tmp_path / "g.jsonl", [{"question": "q1?", "answers": ["a"]}, {"question": "q2?", "answers": ["b"]}]
    )


def test_the_row_is_the_large_model_with_the_instruction(write_recipe, general, tmp_path, seen):
    data = write_jsonl(tmp_path / "style.jsonl", chat_rows(2))
    report = sweep(
        write_recipe(tuned="adapter: lora", name="pb"),
        data=data,
        general=general,
        alphas=[None],
        run_grid=False,
        num_predict=6,
        progress=False,
        marker="a",
        measure=True,
        prompt_baseline=PIRATE,
    )
    by = {s.label: s for s in report.settings}
    row = by[prompted.LABEL]
    assert (row.member, row.system, row.asked) == ("large", PIRATE, 2)
    mine = [r for r in seen if PIRATE in r.prompt]
    assert len(mine) == 2 and all(r.member == "large" and r.alpha is None for r in mine)
    assert len(seen) == 2 * len(report.settings)  # and no other row's requests carry it
    # the style data is teacher-forced with the instruction in its context: same tokens, other numbers
    assert row.tokens == by["large"].tokens > 0 and row.nll != pytest.approx(by["large"].nll)
    assert len(row.ratios) == 2  # the marker-free measure reads its replies too
    d = next(x for x in report.to_dict()["settings"] if x["setting"] == prompted.LABEL)
    assert d["system"] == PIRATE and d["general_accuracy"] is not None and d["style_nll"] is not None
    assert d["measured_fraction"] is not None and d["styled_fraction"] is not None
    assert prompted.LABEL in report.table() and any(PIRATE in n for n in report.notes)


def test_no_text_takes_the_recipes_system_prompt(write_recipe, general, seen):
    path = write_recipe(name="sys", extra="system: Speak in rhymes\n")
    report = sweep(
        path, data=None, general=general, alphas=[None], run_grid=False, num_predict=4, progress=False,
        prompt_baseline=prompted.FROM_RECIPE,
    )  # fmt: skip
    assert next(s for s in report.settings if s.label == prompted.LABEL).system == "Speak in rhymes"
    assert all("Speak in rhymes" in r.prompt for r in seen)  # the recipe's system prompt is every row's
    with pytest.raises(DataError, match="no `system:` prompt") as err:
        sweep(
            write_recipe(name="nosys"), data=None, general=general, alphas=[None], run_grid=False,
            prompt_baseline=prompted.FROM_RECIPE,
        )  # fmt: skip
    assert "\n" not in str(err.value)


def test_instruction_goes_before_a_system_prompt_the_data_has():
    chat = Example(
        1,
        ({"role": "user", "content": "hi", "weight": 0}, {"role": "assistant", "content": "yo", "weight": 1}),
    )
    sys_chat = Example(2, ({"role": "system", "content": "be kind", "weight": 0}, *chat.messages))
    out, left_out = prompted.with_instruction([chat, sys_chat, Example(3, text="raw")], PIRATE)
    assert left_out == 1 and [m["content"] for m in out[0].messages] == [PIRATE, "hi", "yo"]
    assert out[1].messages[0]["content"] == f"{PIRATE}\n\nbe kind" and len(out[1].messages) == 3


def test_eval_cli_prints_and_writes_the_row(write_recipe, general, tmp_path, capsys):
    from nanocommander.cli import main

    out = tmp_path / "r.json"
    path = write_recipe(name="cli", extra="system: Speak in rhymes\n")
    argv = ["eval", str(path), "--general", str(general), "--num-predict", "4", "--alpha", "1"]
    assert main([*argv, "--prompt-baseline", PIRATE, "--json", str(out)]) == 0
    assert prompted.LABEL in capsys.readouterr().out
    rows = {r["setting"]: r for r in json.loads(out.read_text())["settings"]}
    assert rows[prompted.LABEL]["system"] == PIRATE and rows["large"]["system"] is None
    assert main([*argv, "--prompt-baseline", "--json", str(out)]) == 0  # no value: the recipe's
    rows = {r["setting"]: r for r in json.loads(out.read_text())["settings"]}
    assert rows[prompted.LABEL]["system"] == "Speak in rhymes"
