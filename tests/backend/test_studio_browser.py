"""The playground in a real browser (headless Chromium): loads clean, streams, highlights, compares."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "studio_screens.py"
spec = importlib.util.spec_from_file_location("studio_screens", BENCH)
screens = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screens)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(screens.chromium_paths() is None, reason="needs chromium and chromedriver"),
]


def test_studio_in_chromium(start_server, recipe_of, tmp_path):
    pytest.importorskip("selenium")
    live = start_server([recipe_of("tiny", extra="parameters: {num_ctx: 1024}\n")])
    port = live.url.rsplit(":", 1)[1]
    driver = screens.browser(tmp_path / "profile")
    try:
        seen = screens.exercise(driver, f"http://localhost:{port}/studio", tmp_path / "shots", reask=True)
    finally:
        driver.quit()
    assert seen["console"] == []  # no console errors
    assert seen["items"] > 1 and seen["tokens"] > 0  # the reply streamed, token by token
    assert seen["steered"] and all("large's choice" in t for t in seen["steered"])  # tuned differs from base
    members = [c[0] for c in seen["columns"]]
    assert members == ["large", "tuned", "composite"] and all(c[2] for c in seen["columns"])
    assert len({c[1] for c in seen["columns"]}) == 3  # side by side
    assert seen["points"] == len(screens.SAMPLE_SWEEP["settings"]) and seen["region"] == 1
    assert (tmp_path / "shots" / "studio-chat.png").stat().st_size > 0
    assert (tmp_path / "shots" / "studio-compare.png").stat().st_size > 0
    alpha0 = seen["alpha0"]  # moving the alpha slider re-asked: alpha 0 is the large model alone
    assert alpha0["steered"] == 0 and alpha0["composite"] == alpha0["large"]
