"""Drive the /studio playground in headless Chromium: chat, compare, sweep chart; write screenshots.

    python bench/studio_screens.py RECIPE.yaml [--out bench/screenshots] [--prompt TEXT]

Starts a NanoCommander server on a free loopback port over the recipe, opens
http://localhost:PORT/studio in Debian's chromium + chromedriver (selenium), asks one chat
question, runs compare, draws a sample sweep, and saves studio-chat.png and studio-compare.png.
tests/backend/test_studio_browser.py runs the same steps (`exercise`) over the tiny models.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from webui_browser import CHROME_FLAGS as FLAGS  # noqa: E402 (one set of headless Chromium flags for both pages)

SAMPLE_SWEEP = {  # the shape of `nanocommander eval --sweep --json` (tune/sweep.py SweepReport.to_dict)
    "recipe": "sample",
    "settings": [
        {
            "setting": "large",
            "style_nll": 3.1,
            "general_accuracy": 0.80,
            "steered_fraction": 0.0,
            "marked": False,
        },
        {
            "setting": "tuned",
            "style_nll": 1.2,
            "general_accuracy": 0.35,
            "steered_fraction": None,
            "marked": False,
        },
        {
            "setting": "proxy a=1",
            "style_nll": 1.25,
            "general_accuracy": 0.62,
            "steered_fraction": 1.0,
            "marked": False,
        },
        {
            "setting": "gated top1=0.5",
            "style_nll": 1.45,
            "general_accuracy": 0.74,
            "steered_fraction": 0.3,
            "marked": True,
        },
        {
            "setting": "nudge reject=10",
            "style_nll": 1.28,
            "general_accuracy": 0.79,
            "steered_fraction": 0.1,
            "marked": True,
        },
    ],
    "notes": [],
}


def chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def browser(profile: Path):
    """A headless Chromium with a fresh profile and console logging on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = paths[0]
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(paths[1]), options=opts)


def wait(driver, script: str, timeout: float = 60.0):
    """Poll a JS expression until it is truthy; returns its value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script("return " + script)
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for: {script}")


def exercise(
    driver, url: str, out: Path, prompt: str = "Tell me a story", num_predict: int = 48, reask: bool = False
) -> dict:
    """Chat, compare and sweep on the page at `url`; screenshots into `out`; what was seen."""
    from selenium.webdriver.common.by import By

    out.mkdir(parents=True, exist_ok=True)
    driver.get(url)
    wait(driver, "document.getElementById('model').options.length > 0")
    driver.execute_script("document.getElementById('num-predict').value = arguments[0]", num_predict)
    driver.find_element(By.ID, "prompt").send_keys(prompt)
    driver.find_element(By.ID, "send").click()
    wait(driver, "/tokens:/.test(document.getElementById('status').textContent)", 300)
    seen: dict = {
        "items": driver.execute_script("return window.NanoStudio.state.items"),
        "tokens": len(driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .tok")),
        "steered": [
            e.get_attribute("title")
            for e in driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .tok.steered")
        ],
        "status": driver.find_element(By.ID, "status").text,
    }
    driver.execute_script("window.NanoStudio.showSweep(arguments[0])", json.dumps(SAMPLE_SWEEP))
    seen["points"] = len(driver.find_elements(By.CSS_SELECTOR, "#chart circle"))
    seen["region"] = len(driver.find_elements(By.CSS_SELECTOR, "#chart rect.region"))
    driver.save_screenshot(str(out / "studio-chat.png"))
    driver.find_element(By.ID, "compare").click()
    wait(driver, "/compared/.test(document.getElementById('status').textContent)", 300)
    cols = driver.find_elements(By.CSS_SELECTOR, "#compare-view .col")
    seen["columns"] = [
        (c.get_attribute("data-member"), c.rect["x"], c.find_element(By.CLASS_NAME, "out").text) for c in cols
    ]
    driver.save_screenshot(str(out / "studio-compare.png"))
    if reask:  # the alpha slider re-asks: at alpha 0 the composite column is the large model's text
        driver.execute_script(
            "document.getElementById('status').textContent = '';"
            "const a = document.getElementById('alpha'); a.value = 0;"
            "a.dispatchEvent(new Event('input'));"
        )
        wait(driver, "/compared/.test(document.getElementById('status').textContent)", 300)
        outs = {c.get_attribute("data-member"): c.find_element(By.CLASS_NAME, "out") for c in cols}
        seen["alpha0"] = {
            "composite": outs["composite"].text,
            "large": outs["large"].text,
            "steered": len(outs["composite"].find_elements(By.CSS_SELECTOR, ".tok.steered")),
        }
    seen["console"] = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    return seen


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import LiveServer, free_port

    from nanocommander.backend.config import Settings
    from nanocommander.engine.request.recipe import Recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--out", default=str(ROOT / "bench" / "screenshots"))
    ap.add_argument("--prompt", default="Tell me a story")
    ap.add_argument("--num-predict", type=int, default=48)
    args = ap.parse_args()
    recipe = Recipe.parse(Path(args.recipe).read_text(), check_files=True)
    live = LiveServer(Settings(port=free_port()), [recipe]).start()
    port = live.url.rsplit(":", 1)[1]
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(Path(profile))
        try:
            seen = exercise(
                driver, f"http://localhost:{port}/studio", Path(args.out), args.prompt, args.num_predict
            )
        finally:
            driver.quit()
            live.stop()
    print(
        json.dumps(
            {k: v for k, v in seen.items() if k != "steered"} | {"steered": len(seen["steered"])}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
