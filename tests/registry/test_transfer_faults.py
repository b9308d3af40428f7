"""Faults while moving bytes: cut downloads resume, bad digests leave nothing, full disks are reported."""

from __future__ import annotations

import hashlib
import subprocess
import threading

import pytest

from nanocommander.errors import DigestMismatch, RegistryError
from nanocommander.registry import Registry


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(models) -> list[str]:
    """Files a failed pull might leave: GGUF-sized blobs, temp files, manifests."""
    out = (
        [p.name for p in (models / "blobs").iterdir() if p.name.startswith(".tmp")]
        if (models / "blobs").exists()
        else []
    )
    out += (
        [str(p) for p in (models / "manifests").rglob("*") if p.is_file()]
        if (models / "manifests").exists()
        else []
    )
    return out


def test_cut_download_resumes_on_the_next_pull(hub, published, hub_recipe, isolated):
    _, file, data = published["large"]
    cut = 100_000
    hub.cut_after[file] = cut
    hub.fail_after_cut = True  # the connection drops, and the Hub stays down for the rest of this pull
    reg = Registry()
    with pytest.raises(RegistryError, match="pull again to resume"):
        list(reg.pull(hub_recipe("tiny")))
    assert hub.served[file] == cut
    partial = [p for p in (isolated / "partial").iterdir()]
    assert [p.stat().st_size for p in partial] == [cut]
    assert leftovers(isolated) == [] and reg.list() == []

    assert reg.verify().partials == cut  # reported, kept for resuming
    hub.fail_gets.clear()
    hub.reset_counters()
    list(reg.pull(hub_recipe("tiny")))
    assert hub.auth == {"Bearer hf_test_token"}  # HF_TOKEN, read at call time
    assert hub.served[file] == len(data) - cut  # only the missing tail was sent
    assert (file, f"bytes={cut}-") in hub.gets
    assert reg.resolve("tiny").large.source.path.read_bytes() == data
    assert list((isolated / "partial").iterdir()) == []


def test_connection_drop_mid_file_is_resumed_within_one_pull(hub, published, hub_recipe):
    _, file, data = published["base"]
    hub.cut_after[file] = 50_000
    reg = Registry()
    list(reg.pull(hub_recipe("tiny")))  # huggingface_hub's http_get retries with a Range request
    assert hub.served[file] == len(data)
    assert reg.resolve("tiny").base.source.path.read_bytes() == data


def test_corrupt_download_leaves_no_blob_and_no_manifest(hub, published, hub_recipe, isolated):
    _, file, data = published["tuned"]
    hub.corrupt[file] = bytes(reversed(data))  # the ETag promises sha256(data)
    reg = Registry()
    with pytest.raises(DigestMismatch, match=f"expected sha256:{sha(data)}"):
        list(reg.pull(hub_recipe("tiny")))
    assert not (isolated / "blobs" / f"sha256-{sha(bytes(reversed(data)))}").exists()
    assert not (isolated / "blobs" / f"sha256-{sha(data)}").exists()
    assert list((isolated / "partial").iterdir()) == []
    assert leftovers(isolated) == [] and reg.list() == []


def test_wrong_pinned_sha256_fails_before_downloading(hub, published, hub_recipe, isolated):
    repo, file, data = published["tuned"]
    wrong = "f" * 64
    reg = Registry()
    with pytest.raises(DigestMismatch):
        list(reg.pull(hub_recipe("tiny", tuned=f"{{hf: {repo}, file: {file}, sha256: {wrong}}}")))
    assert hub.served[file] == 0 and reg.list() == [] and leftovers(isolated) == []


def test_wrong_sha256_on_a_local_member_stores_nothing(tiny, write_recipe, isolated):
    reg = Registry()
    path = write_recipe(tuned=f"path: {tiny['tuned']}, sha256: {'a' * 64}")
    with pytest.raises(DigestMismatch):
        list(reg.pull(path))
    assert reg.list() == [] and leftovers(isolated) == []
    assert not (isolated / "blobs" / f"sha256-{sha(tiny['tuned'].read_bytes())}").exists()


def test_two_concurrent_pulls_download_a_member_once(hub, published, hub_recipe, tiny):
    hub.chunk_delay = 0.01  # long enough for the two pulls to overlap
    paths = [hub_recipe("one"), hub_recipe("two", tuned=f"{{adapter: {tiny['lora']}}}")]
    errors: list[BaseException] = []

    def run(path):
        try:
            list(Registry().pull(path))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for role in ("large", "base"):
        _, file, data = published[role]
        assert hub.served[file] == len(data)
        assert len([g for g in hub.gets if g[0] == file]) == 1
    reg = Registry()
    assert sorted(e.name.display() for e in reg.list()) == ["one:latest", "two:latest"]
    assert reg.resolve("one").large.source.path == reg.resolve("two").large.source.path


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        pytest.skip("needs permission to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", str(mount)], check=False, capture_output=True, timeout=10)


def test_disk_full_is_a_clear_error_and_registers_nothing(small_disk, write_recipe, monkeypatch):
    monkeypatch.setenv("NANOCOMMANDER_MODELS", str(small_disk / "models"))
    reg = Registry()
    with pytest.raises(RegistryError, match="disk full"):
        list(reg.pull(write_recipe(name="big")))  # the large member alone is bigger than the disk
    assert reg.list() == [] and leftovers(small_disk / "models") == []
