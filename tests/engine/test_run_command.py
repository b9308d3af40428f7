"""`nanocommander run`: stdout carries only the generated text; errors go to stderr with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys


def nc(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "nanocommander", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


def test_run_prints_only_the_answer_on_stdout(write_recipe):
    recipe = write_recipe(extra="parameters: {temperature: 0, num_predict: 12}\n")
    first = nc("run", str(recipe), "hello", "--verbose")
    assert first.returncode == 0, first.stderr
    assert "eval:" in first.stderr and "tokens/s" in first.stderr
    assert "eval:" not in first.stdout
    again = nc("run", str(recipe), "hello")
    assert again.stdout == first.stdout  # temperature 0 from the recipe: same answer


def test_run_alpha_zero_matches_compare_large_section(write_recipe):
    recipe = write_recipe(extra="parameters: {temperature: 0, num_predict: 10}\n")
    large = nc("run", str(recipe), "hi", "--alpha", "0")
    compare = nc("run", str(recipe), "hi", "--compare")
    assert compare.returncode == 0, compare.stderr
    assert compare.stdout.startswith(large.stdout)
    assert "--- tuned alone ---" in compare.stderr and "--- composite ---" in compare.stderr


def test_interactive_chat_reads_turns_from_stdin(write_recipe):
    recipe = write_recipe(extra="parameters: {temperature: 0, num_predict: 5}\n")
    out = nc("run", str(recipe), stdin="hello\nagain\n/bye\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") >= 2


def test_broken_recipe_exits_non_zero_with_file_line_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nmembers:\n  large: {path: nowhere.gguf}\n  base: {path: b.gguf}\n  tuned: {path: c}\n"
    )
    out = nc("run", str(bad), "hi")
    assert out.returncode != 0 and out.stdout == ""
    assert f"{bad}:3: members.large.path: file not found" in out.stderr
