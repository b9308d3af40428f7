"""`nanocommander calibrate` from the command line: one clear error line per bad input, the
style-instruction reference row (reported, never chosen) and `--write` touching `steer:` alone."""

from __future__ import annotations

import json

import pytest

from nanocommander.cli import main
from nanocommander.engine.request.decode_options import RECOMMENDED, Steer
from nanocommander.engine.request.recipe import Recipe
from nanocommander.tune import calibrate as cal

SMALL = ["--facts", "1", "--open", "2", "--num-predict", "4"]


@pytest.fixture
def general(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"question": "q?", "answers": ["a"]}\n{"question": "r?", "answers": ["b"]}\n')
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("no adapter", "tuned member is an adapter"),
        ("empty data", "no usable records"),
        ("no large", "large"),
        ("missing recipe", "nope.yaml"),
        ("missing data", "no such file"),
        ("bad budget", "must be >= 1"),
    ],
)
def test_bad_inputs_get_one_clear_error_line(case, expect, write_recipe, tmp_path, capsys):
    recipe = write_recipe(tuned="adapter: lora", name="ok")
    args = ["calibrate", str(recipe), *SMALL]
    if case == "no adapter":
        args[1] = str(write_recipe(name="full"))
    elif case == "empty data":
        (tmp_path / "empty.jsonl").write_text("")
        args += ["--data", str(tmp_path / "empty.jsonl")]
    elif case == "no large":
        text = recipe.read_text()
        start = text.index("  large:")
        recipe.write_text(text[:start] + text[text.index("\n", start) + 1 :])
    elif case == "missing recipe":
        args[1] = str(tmp_path / "nope.yaml")
    elif case == "missing data":
        args += ["--data", str(tmp_path / "absent.jsonl")]
    elif case == "bad budget":
        args += ["--open", "0"]
    before = recipe.read_text()
    assert main(args) != 0
    line = _one_error_line(capsys)
    assert line.startswith("Error: ") and expect in line
    assert recipe.read_text() == before


def test_the_style_instruction_row_is_reported_and_never_chosen(write_recipe, general, tmp_path, capsys):
    recipe = write_recipe(tuned="adapter: lora", name="pb")
    out = tmp_path / "c.json"
    args = ["calibrate", str(recipe), "--general", str(general), *SMALL, "--json", str(out)]
    assert main([*args, "--prompt-baseline", "Talk like a pirate."]) == 0
    table = capsys.readouterr().out
    line = next(x for x in table.splitlines() if x.startswith(cal.BASELINE))
    assert "reference" in line and "<- chosen" not in line
    doc = json.loads(out.read_text())
    row = doc["rows"][cal.BASELINE]
    assert (
        doc["baseline"] == cal.BASELINE and row["reference"] and row["instruction"] == "Talk like a pirate."
    )
    assert row["open"] == 2 and "steer" not in row and doc["chosen"] != cal.BASELINE
    assert doc["steer"] is not None and doc["seconds"] >= 0 and "prompt_note" in doc


def test_the_recipes_system_prompt_is_the_default_instruction(write_recipe, general, tmp_path, capsys):
    """Every row's chats carry the recipe's system: already, so the reference row repeats large's."""
    recipe = write_recipe(tuned="adapter: lora", name="sys", extra="system: Talk like a pirate.\n")
    rows, chosen, _ = cal.calibrate(recipe, general=general, n_facts=1, n_open=2, num_predict=4)
    by = {r.label: r for r in rows}
    assert by[cal.BASELINE].replies == by["large"].replies and by[cal.BASELINE].reference
    assert chosen.label != cal.BASELINE
    rows, _, _ = cal.calibrate(
        write_recipe(tuned="adapter: lora", name="nosys"), general=general, n_facts=1, n_open=2, num_predict=4
    )
    assert not any(r.reference for r in rows)  # no instruction, no reference row


def _row(label, correct, styled, member="composite", reference=False):
    return cal.Row(
        label, member, Steer(), correct=correct, asked=10, styled=styled, open=6, reference=reference
    )


def test_the_output_says_when_prompting_alone_would_do():
    large, chosen = _row("large", 10, 0, "large"), _row("proxy", 10, 3)
    beats = _row(cal.BASELINE, 10, 5, "large", reference=True)
    assert cal.choose([large, chosen, beats]) is chosen  # never the reference, however styled
    note = cal.prompt_note([large, chosen, beats], chosen)
    assert note and note.startswith("prompting alone beats") and "\n" not in note
    ties = _row(cal.BASELINE, 10, 3, "large", reference=True)
    assert cal.prompt_note([large, chosen, ties], chosen).startswith("prompting alone matches")
    for loses in (_row(cal.BASELINE, 8, 6, "large", True), _row(cal.BASELINE, 10, 2, "large", True)):
        assert cal.prompt_note([large, chosen, loses], chosen) is None  # loses facts, or less style
    assert cal.prompt_note([large, chosen], chosen) is None


def test_write_replaces_a_block_steer_and_nothing_else(tmp_path, write_recipe):
    path = write_recipe(
        tuned="adapter: lora",
        name="blk",
        extra="# top comment\nsteer:\n  mode: gated\n  reject: 2\n# after\nsystem: hi  # keep\n",
    )
    before = path.read_text().splitlines()
    cal.write_steer(path, RECOMMENDED)
    after = path.read_text().splitlines()
    assert "steer: recommended" in after
    assert [x for x in before if not x.startswith(("steer:", "  mode:", "  reject:"))] == [
        x for x in after if x != "steer: recommended"
    ]
    assert Recipe.load(path).steer == RECOMMENDED and Recipe.load(path).system == "hi"
