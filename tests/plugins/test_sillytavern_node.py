"""Run the SillyTavern extension's Node tests (tests/plugins/*.test.mjs) from the main pytest run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_sillytavern_extension_node_tests():
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "plugins").glob("*.test.mjs"))
    assert files
    result = subprocess.run(["node", "--test", *files], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_extension_reads_members_from_backend(live_server):
    """The extension's own fetchShow/describeMembers against the real server's /api/show."""
    script = (
        "import { fetchShow, describeMembers } from './plugins/sillytavern/index.js';\n"
        f"console.log(describeMembers(await fetchShow('{live_server}', 'tiny')));\n"
        f"console.log(describeMembers(await fetchShow('{live_server}', 'tiny:latest')));"
    )
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for block in result.stdout.strip().split("recipe alpha:")[1:]:
        lines = block.strip().splitlines()
        assert lines[0].strip() == "1"
        assert [line.split(":")[0] for line in lines[1:]] == ["large", "base", "tuned"]
        assert "large.gguf, llama" in lines[1]


# The extension inside a SillyTavern of either getContext() shape: SillyTavern 1.12.6's (no
# textCompletionSettings, no page in Node either) and 1.13+'s. It edits SillyTavern's real KoboldCpp body
# (tests/fixtures/sillytavern) in the TEXT_COMPLETION_SETTINGS_READY event, and the body goes to the server
# as SillyTavern forwards it.
EXTENSION_RUN = """
import { readFile } from 'node:fs/promises';
import { init, MODULE } from './plugins/sillytavern/index.js';
const [shape, version, url] = process.argv.slice(1);
const fixture = JSON.parse(await readFile(`tests/fixtures/sillytavern/bodies-${version}.json`, 'utf8'));
const body = structuredClone(fixture.cases.find((c) => c.api === 'textgen/koboldcpp' && !c.stream).body);
Object.assign(body, { prompt: 'The weather', temperature: 0, max_tokens: 12, api_server: url });
const handlers = {};
const types = { TEXT_COMPLETION_SETTINGS_READY: 'tcsr', GENERATE_AFTER_DATA: 'gad', ONLINE_STATUS_CHANGED: 'osc' };
const ctx = { eventSource: { on: (name, fn) => { handlers[name] = fn; } }, eventTypes: types, event_types: types,
    extensionSettings: { [MODULE]: { alpha: 0 } }, mainApi: 'textgenerationwebui', onlineStatus: 'tiny',
    saveSettingsDebounced() {} };
if (shape === 'new') ctx.textCompletionSettings = { type: 'koboldcpp', server_urls: { koboldcpp: url } };
const { serverUrl } = await init(ctx, { $: null, getContext: () => ctx });
handlers.tcsr(body);
const reply = await fetch(`${url}/v1/completions`, { method: 'POST', body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' } });
console.log(JSON.stringify({ alpha: body.alpha, url: serverUrl(), status: reply.status, text: (await reply.json()).choices[0].text }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("version", ["1.12.6", "1.19.0"])
@pytest.mark.parametrize("shape", ["old", "new"])
def test_extension_alpha_reaches_the_engine(live_server, shape, version):
    import json

    import httpx

    result = subprocess.run(
        ["node", "--input-type=module", "-e", EXTENSION_RUN, shape, version, live_server],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["alpha"] == 0 and out["status"] == 200 and out["url"] == live_server
    fixture = json.loads((ROOT / "tests" / "fixtures" / "sillytavern" / f"bodies-{version}.json").read_text())
    body = next(c["body"] for c in fixture["cases"] if c["api"] == "textgen/koboldcpp" and not c["stream"])
    body = {**body, "prompt": "The weather", "temperature": 0, "max_tokens": 12}

    def text(**extra):
        reply = httpx.post(f"{live_server}/v1/completions", json={**body, **extra}, timeout=60)
        return reply.json()["choices"][0]["text"]

    assert out["text"] == text(member="large")  # alpha 0: the large model alone
    assert out["text"] != text()  # the recipe's alpha (1) steers it elsewhere
