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
    script = ("import { fetchShow, describeMembers } from './plugins/sillytavern/index.js';\n"
              f"console.log(describeMembers(await fetchShow('{live_server}', 'tiny')));\n"
              f"console.log(describeMembers(await fetchShow('{live_server}', 'tiny:latest')));")
    result = subprocess.run(["node", "--input-type=module", "-e", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for block in result.stdout.strip().split("recipe alpha:")[1:]:
        lines = block.strip().splitlines()
        assert lines[0].strip() == "1"
        assert [line.split(":")[0] for line in lines[1:]] == ["large", "base", "tuned"]
        assert "large.gguf, llama" in lines[1]
