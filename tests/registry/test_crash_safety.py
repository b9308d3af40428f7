"""kill -9 of a `nanocommander` process during pull, create, cp, rm and push, at many points.

Each trial starts from a fresh copy of a prepared store, runs the verb in a real CLI
process and kills it with SIGKILL either just before its Nth write to the store
(crashy.py: every write is an audit event) or after a random delay. Then the store must
be consistent (`verify`: no corrupt blob, no model with a missing or unreadable layer;
`verify --fix` leaves no stale temp file), and the same verb run again must complete
with the right result.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nanocommander.registry import Registry

CRASHY = Path(__file__).with_name("crashy.py")
POINTS = int(os.environ.get("CRASH_POINTS", "6"))  # kill points per verb (besides the first and last)


def cli(
    args: list[str],
    env: dict[str, str],
    *,
    crash_at: int | None = None,
    count: Path | None = None,
    kill_after: float | None = None,
) -> subprocess.CompletedProcess:
    """Run the CLI (through crashy.py when crashing); returns the finished process."""
    env = {**env, "CRASH_ROOT": env["NANOCOMMANDER_MODELS"], "CRASH_AT": str(crash_at or 0)}
    if count is not None:
        env["CRASH_COUNT_FILE"] = str(count)
    cmd = [sys.executable, str(CRASHY), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def assert_consistent(store: Path) -> None:
    """What `verify` checks (no corrupt blob, every model's layers present and readable), and
    `verify --fix` then leaves no stale temp file from the killed process."""
    report = Registry(store).verify()
    assert report.corrupt == [] and report.affected == [], report
    Registry(store).verify(fix=True)
    stale = [p.name for p in store.rglob(".tmp-*")] + [p.name for p in store.rglob(".upload-*")]
    assert stale == [], stale
    for entry in Registry(store).list():  # every listed model resolves to files that exist
        recipe = Registry(store).resolve(entry.name.display())
        assert all(m.source is None or Path(m.source.path).is_file() for m in recipe.members)


def kill_points(count: int, rng: random.Random) -> list[int]:
    inner = range(2, count)
    return sorted({1, count} | set(rng.sample(inner, min(POINTS, len(inner)))))


@pytest.fixture
def env(isolated) -> dict[str, str]:
    return {**os.environ}


@pytest.fixture
def local_recipes(tmp_path, tiny) -> dict[str, Path]:
    def write(name: str, tuned: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            f"name: {name}\nmembers:\n  large: {{path: {tiny['large']}}}\n  base: {{path: {tiny['base']}}}\n"
            f"  tuned: {tuned}\nalpha: 0.5\nsystem: be brief\n"
        )
        return path

    return {
        "full": write("full", f"{{path: {tiny['tuned']}}}"),
        "lora": write("lora", f"{{adapter: {tiny['lora']}}}"),
    }


def run_crash_loop(
    verb_args: list[str],
    env: dict[str, str],
    template: Path,
    check_done,
    tmp_path: Path,
    *,
    again: list[str] | None = None,
) -> int:
    """Count the verb's writes on a copy of `template`, then kill it at several of them; after each
    kill the store is consistent and `again` (default: the same verb) completes. Returns the count."""
    store = Path(env["NANOCOMMANDER_MODELS"])
    counter = tmp_path / "count"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(template, store, symlinks=True)
    done = cli(verb_args, env, count=counter)
    assert done.returncode == 0, done.stderr
    count = int(counter.read_text())
    assert count > 0
    check_done(store)
    rng = random.Random(f"{verb_args}")
    for point in kill_points(count, rng):
        shutil.rmtree(store)
        shutil.copytree(template, store, symlinks=True)
        killed = cli(verb_args, env, crash_at=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr)
        assert_consistent(store)
        if again is None or again:
            rerun = cli(again or verb_args, env)
            assert rerun.returncode == 0, (point, rerun.stderr)
        check_done(store)
        assert_consistent(store)
    return count


def make_template(tmp_path: Path, *models: tuple[str, Path]) -> Path:
    template = tmp_path / "template"
    reg = Registry(template)
    for name, recipe in models:
        list(reg.create(name, path=recipe))
    template.mkdir(exist_ok=True)
    return template


def names(store: Path) -> set[str]:
    return {e.name.display() for e in Registry(store).list()}


@pytest.mark.slow
def test_kill_during_create(env, tmp_path, local_recipes):
    template = make_template(tmp_path)

    def done(store: Path) -> None:
        assert names(store) == {"made:latest"}
        assert Registry(store).resolve("made").tuned.adapter is not None

    run_crash_loop(["create", "made", "-f", str(local_recipes["lora"])], env, template, done, tmp_path)


@pytest.mark.slow
def test_kill_during_cp(env, tmp_path, local_recipes):
    template = make_template(tmp_path, ("base-model", local_recipes["full"]))

    def done(store: Path) -> None:
        assert names(store) == {"base-model:latest", "copied:latest"}
        assert Registry(store).resolve("copied").large.source.path.is_file()

    run_crash_loop(["cp", "base-model", "copied"], env, template, done, tmp_path)


@pytest.mark.slow
def test_kill_during_rm(env, tmp_path, local_recipes):
    """rm removes the manifest, then the blobs no other model uses: a kill between leaves blobs
    that the next rm (or verify --fix) collects; the model that shares blobs keeps working."""
    template = make_template(tmp_path, ("keep", local_recipes["full"]), ("victim", local_recipes["lora"]))
    lora_blobs = set(Registry(template).store.blob_digests())

    def done(store: Path) -> None:
        assert names(store) == {"keep:latest"}
        assert Registry(store).resolve("keep").tuned.source.path.is_file()

    def rm_if_listed(store: Path) -> None:
        """A kill after the manifest went leaves `victim` gone and its adapter blob behind: the
        next rm of anything, or `verify --fix`, collects it."""
        if "victim:latest" in names(store):
            assert cli(["rm", "victim"], env).returncode == 0
        verify = cli(["verify", "--fix"], env)
        assert verify.returncode == 0 and "0 corrupt" in verify.stdout, verify.stdout
        done(store)
        assert len(Registry(store).store.blob_digests()) < len(lora_blobs)  # the adapter blob went

    run_crash_loop(["rm", "victim"], env, template, rm_if_listed, tmp_path, again=[])


@pytest.mark.slow
def test_kill_during_pull_at_every_kind_of_write(env, tmp_path, hub_recipe):
    recipe = hub_recipe("hubbed")
    env = {**env, "HF_ENDPOINT": os.environ["HF_ENDPOINT"]}
    template = make_template(tmp_path)

    def done(store: Path) -> None:
        assert names(store) == {"hubbed:latest"}
        assert not [p for p in (store / "partial").iterdir()]  # resumed and adopted

    run_crash_loop(["pull", str(recipe)], env, template, done, tmp_path)


@pytest.mark.slow
def test_kill_at_random_times_during_pull_and_push(env, tmp_path, hub, hub_recipe, local_recipes):
    """Slow transfers killed after a random delay: mid-download (the partial file resumes) and
    mid-upload (the Hub commit is all or nothing; the store is only read)."""
    env = {**env, "HF_ENDPOINT": hub.url}
    store = Path(env["NANOCOMMANDER_MODELS"])
    recipe = hub_recipe("hubbed")
    list(Registry(store).create("local", path=local_recipes["lora"]))
    hub.chunk_delay = 0.1  # 16 KiB per 0.1 s: about 3 s for the one member the pull must fetch
    rng, kills = random.Random(15), 0
    for trial in range(4):
        killed = cli(["pull", str(recipe)], env, kill_after=rng.uniform(0.8, 2.5))
        kills += killed.returncode == -signal.SIGKILL
        assert_consistent(store)
        rerun = cli(["pull", str(recipe)], env)
        assert rerun.returncode == 0, (trial, killed.returncode, rerun.stderr)
        assert names(store) == {"local:latest", "hubbed:latest"}
        assert_consistent(store)
        assert cli(["rm", "hubbed"], env).returncode == 0
    for trial in range(3):
        dest = f"hf.co/me/pushed{trial}"
        # a push references files an earlier push put on the Hub (registry/push.py hub_home): forget
        # them, so that every trial uploads its members again
        shutil.rmtree(store / "pushed", ignore_errors=True)
        cli(["push", "local", dest], env, kill_after=rng.uniform(0.3, 2.0))
        assert_consistent(store)
        rerun = cli(["push", "local", dest], env)
        assert rerun.returncode == 0, rerun.stderr
        files = hub.repos[f"me/pushed{trial}"].head[1]
        assert "nanocommander.yaml" in files and any(f.endswith(".gguf") for f in files)
    assert kills >= 3, kills  # the pulls were cut mid-download
