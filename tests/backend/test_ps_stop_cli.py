"""`nanocommander ps` / `stop` against a live server, and llama.cpp's log kept off stderr unless asked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import httpx
import pytest


def cli(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NANOCOMMANDER_HOST": server.url.removeprefix("http://")}
    return subprocess.run(
        [sys.executable, "-m", "nanocommander", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def live(start_server, recipe_of):
    return start_server([recipe_of("pstiny"), recipe_of("pslora", adapter=True)], keep_alive=300, max_queue=4)


def test_ps_lists_loaded_models_and_stop_unloads_them(live):
    empty = cli(live, "ps")
    assert empty.returncode == 0 and empty.stdout.split() == [
        "NAME",
        "ID",
        "SIZE",
        "PROCESSOR",
        "CONTEXT",
        "PID",
        "REPRODUCIBLE",
        "UNTIL",
    ]
    httpx.post(f"{live.url}/api/generate", json={"model": "pstiny", "keep_alive": "10m"}, timeout=60)
    listed = cli(live, "ps")
    header, row = listed.stdout.splitlines()
    assert row.startswith("pstiny:latest") and "100% CPU" in row and "minutes from now" in row
    entry = httpx.get(f"{live.url}/api/ps").json()["models"][0]
    assert entry["digest"][:12] in row
    assert entry["runner_pid"] is None or f" {entry['runner_pid']} " in row  # the model's runner process
    assert row.split()[-5] == "no"  # REPRODUCIBLE, before UNTIL ("N minutes from now")

    stopped = cli(live, "stop", "pstiny")
    assert stopped.returncode == 0 and stopped.stdout == ""
    assert httpx.get(f"{live.url}/api/ps").json()["models"] == []
    again = cli(live, "stop", "pstiny")
    assert again.returncode == 1 and 'couldn\'t find model "pstiny" to stop' in again.stderr


def test_ps_without_a_server_says_so():
    env = {**os.environ, "NANOCOMMANDER_HOST": "127.0.0.1:9"}  # discard port: nothing listens
    out = subprocess.run(
        [sys.executable, "-m", "nanocommander", "ps"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "is `nanocommander serve` running?" in out.stderr


LOAD = textwrap.dedent(
    """
    import sys
    from nanocommander.engine.runtime.composite import Composite
    from nanocommander.engine.request.recipe import Recipe
    if "--verbose" in sys.argv:
        from nanocommander.engine.llama import log as llamalog
        llamalog.install(True)
    Composite.load(Recipe.load(sys.argv[1])).close()
    """
)


@pytest.mark.parametrize("how", ["quiet", "verbose", "env"])
def test_a_model_load_prints_nothing_from_llama_cpp_unless_asked(write_recipe, how):
    recipe = write_recipe(tuned="adapter: lora")  # the adapter path is where llama.cpp warns most
    env = {k: v for k, v in os.environ.items() if k != "NANOCOMMANDER_DEBUG"}
    if how == "env":
        env["NANOCOMMANDER_DEBUG"] = "1"
    args = [sys.executable, "-c", LOAD, str(recipe)] + (["--verbose"] if how == "verbose" else [])
    out = subprocess.run(args, env=env, capture_output=True, timeout=120)  # fd 2 of the child, whole
    assert out.returncode == 0
    if how == "quiet":
        assert out.stderr == b""
    else:
        assert b"llama_model_loader" in out.stderr or b"llama_context" in out.stderr
