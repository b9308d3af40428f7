"""`tune --into` writes a recipe the engine runs; `eval` ranks the models on data the tuned one learned."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from tune_helpers import ANSWER, chat_rows, write_jsonl  # noqa: E402

from nanocommander.cli import main  # noqa: E402
from nanocommander.engine.request.decode_options import RECOMMENDED  # noqa: E402
from nanocommander.engine.request.recipe import Recipe  # noqa: E402
from nanocommander.tune.errors import TrainingError  # noqa: E402
from nanocommander.tune.into import build_recipe, write_recipe  # noqa: E402
from nanocommander.tune.sweep import LABEL_WIDTH  # noqa: E402


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """An adapter trained on the fixture set's base, with a composite recipe over the fixture's large."""
    folder = tmp_path_factory.mktemp("into")
    data = write_jsonl(folder / "train.jsonl", chat_rows(24))
    out = folder / "adapters" / "tea.gguf"
    rc = main(
        [
            "tune",
            "--base",
            str(tiny["base"]),
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--grad-accum",
            "1",
            "--rank",
            "8",
            "--lr",
            "3e-3",
            "--into",
            "tea-composite",
            "--large",
            str(tiny["large"]),
            "--no-calibrate",  # this file checks the recipe as written (tests/tune/test_autocal.py: calibrated)
        ]
    )
    assert rc == 0
    return {"adapter": out, "recipe": out.parent / "tea-composite.yaml", "data": data}


def test_into_writes_a_recipe_that_loads_and_runs(trained, tiny):
    from nanocommander.engine.request.options import SamplingOptions
    from nanocommander.engine.request.types import GenerateRequest
    from nanocommander.engine.runtime.composite import Composite

    recipe = Recipe.load(trained["recipe"])
    assert recipe.name == "tea-composite" and recipe.tuned.is_adapter
    assert recipe.tuned.adapter.path.resolve() == trained["adapter"].resolve()
    assert recipe.base.source.path.resolve() == tiny["base"].resolve()
    assert recipe.large.source.path.resolve() == tiny["large"].resolve()
    assert "adapter: tea.gguf" in trained["recipe"].read_text()  # relative, so the folder can move
    assert "steer: recommended" in trained["recipe"].read_text() and recipe.steer == RECOMMENDED
    comp = Composite.load(recipe)
    try:
        prompt = comp.chat_prompt([{"role": "user", "content": "hello 1"}])
        greedy = SamplingOptions(temperature=0.0, repeat_penalty=1.0)
        tuned = "".join(
            c.text
            for c in comp.generate(
                GenerateRequest(prompt=prompt, sampling=greedy, num_predict=10, member="tuned")
            )
        )
        fused = "".join(
            c.text for c in comp.generate(GenerateRequest(prompt=prompt, sampling=greedy, num_predict=10))
        )
    finally:
        comp.close()
    assert ANSWER.startswith(tuned) and len(tuned) >= 10  # the adapter, run by llama.cpp, learned the answer
    assert fused  # and the composite generates over it


def test_eval_ranks_tuned_and_composite_below_large(trained, tmp_path, capsys):
    report_path = tmp_path / "eval.json"
    rc = main(
        [
            "eval",
            str(trained["recipe"]),
            "--data",
            str(trained["data"]),
            "--alpha",
            "0.5,1.0",
            "--limit",
            "6",
            "--samples",
            "1",
            "--num-predict",
            "8",
            "--json",
            str(report_path),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "composite a=0.5" in out and "reference" in out
    report = json.loads(report_path.read_text())
    nll = {s["model"]: s["mean_nll"] for s in report["scores"]}
    assert set(nll) == {"large", "base", "tuned", "composite a=0.5", "composite a=1"}
    assert nll["tuned"] < nll["composite a=1"] < nll["composite a=0.5"] < nll["large"]
    assert nll["tuned"] < 0.5 * nll["base"]
    counts = {s["tokens"] for s in report["scores"]}  # every model scored the same answer tokens
    assert report["examples"] == 6 and len(counts) == 1 and counts.pop() >= 6 * len(ANSWER.split())
    assert set(report["samples"][0]["replies"]) == {"large", "tuned", "composite a=0.5", "composite a=1"}


def test_recipe_from_an_existing_one_keeps_large_and_settings(trained, tiny, tmp_path):
    existing = tmp_path / "old.yaml"
    existing.write_text(
        f"name: old\nmembers:\n  large: {{path: {tiny['large']}, n_ctx: 512}}\n"
        f"  base: {{path: {tiny['padded']}}}\n  tuned: {{path: {tiny['tuned']}}}\n"
        "alpha: 0.7\nsystem: be brief\n"
    )
    recipe = build_recipe(adapter=trained["adapter"], base=tiny["base"], existing=existing, name="new")
    path = write_recipe(recipe, tmp_path)
    loaded = Recipe.load(path)
    assert (loaded.name, loaded.alpha, loaded.system, loaded.large.n_ctx) == ("new", 0.7, "be brief", 512)
    assert loaded.base.source.path.resolve() == tiny["base"].resolve() and loaded.tuned.is_adapter
    with pytest.raises(TrainingError, match="needs --large"):
        build_recipe(adapter=trained["adapter"], base=tiny["base"], name="x")
    with pytest.raises(TrainingError, match="use letters"):
        build_recipe(adapter=trained["adapter"], base=tiny["base"], name="bad name", large=tiny["large"])


def test_eval_general_sweep_prints_the_table_and_marks(trained, tmp_path, capsys):
    general = write_jsonl(
        tmp_path / "general.jsonl",
        [{"question": "hello 1", "answers": ["tea"]}, {"question": "what is the answer", "answer": "tea"}],
    )
    report_path = tmp_path / "sweep.json"
    rc = main(
        [
            "eval",
            str(trained["recipe"]),
            "--data",
            str(trained["data"]),
            "--general",
            str(general),
            "--sweep",
            "--limit",
            "3",
            "--num-predict",
            "40",
            "--alpha",
            "1.0",
            "--style-marker",
            "all in the",
            "--json",
            str(report_path),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "style NLL" in out and "recommended a=1" in out and "nudge(top1=0.4) a=1" in out
    rows = {r["setting"]: r for r in json.loads(report_path.read_text())["settings"]}
    assert rows["tuned"]["general_accuracy"] == 1.0 and rows["large"]["general_accuracy"] == 0.0
    assert rows["tuned"]["styled_fraction"] == 1.0 and rows["large"]["styled_fraction"] == 0.0
    assert rows["large"]["steered_fraction"] == 0.0 and rows["proxy a=1"]["steered_fraction"] == 1.0
    tuned_style = rows["tuned"]["style_nll"]
    for r in rows.values():  # large's accuracy is 0, so the style rule alone decides the mark
        assert r["marked"] == (r["style_nll"] <= 1.1 * tuned_style)
        line = next(x for x in out.splitlines() if x[:LABEL_WIDTH].strip() == r["setting"])
        assert line.endswith("*") == r["marked"]
    assert rows["tuned"]["marked"] and not rows["large"]["marked"]
