"""The one GGUF facts reader: what a file says about itself, from its header only.

`show`, `/api/tags`, the memory estimate, the registry's checks, the composite's `show` facts and
the trainer's base check all read GGUF metadata here. The `gguf` package's GGUFReader builds numpy
views for every element of every array, so a 150k-token vocabulary costs seconds (5 s for
SmolLM2's, ~15 s for Qwen2.5's); this reader walks the same layout (GGUF v2/v3: little-endian
counts, key/value pairs, then tensor descriptions) with struct over a memory map, keeps scalars,
strings and small numeric arrays, and steps over the rest, so a header reads in milliseconds.
Results are cached per file (path, size, mtime): each file is read once per change.
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from nanocommander import units

# GGUF value types: id -> struct format of one element (8 = string, 9 = array).
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
MAX_ARRAY = 4096  # numeric arrays up to this length are kept (per-layer head counts); longer are skipped


@dataclass(frozen=True)
class GGUFInfo:
    """The header facts of one GGUF file (a model or a LoRA adapter); None where the file is silent."""

    path: Path
    size: int
    architecture: str | None
    name: str | None
    kind: str  # "model" or "adapter"
    parameters: int
    quantization: str | None
    context_length: int | None
    embedding_length: int | None
    n_layer: int | None
    n_head: int | None
    n_head_kv: int | None
    head_dim: int | None
    chat_template: str | None
    adapter_type: str | None = None  # "lora" for a llama.cpp LoRA adapter

    @property
    def parameter_size(self) -> str:
        return units.count(self.parameters)

    def kv_bytes(self, n_ctx: int) -> int:
        """f16 K and V for every layer at `n_ctx` tokens (0 for adapters or missing metadata)."""
        if not (self.n_layer and self.n_head_kv and self.head_dim):
            return 0
        return 2 * self.n_layer * n_ctx * self.n_head_kv * self.head_dim * 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "parameters": self.parameters,
            "parameter_size": self.parameter_size,
            "quantization": self.quantization,
            "size": self.size,
            "context_length": self.context_length,
            "kind": self.kind,
        }


_CACHE: dict[tuple[str, int, int], GGUFInfo] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 256


def read_gguf(path: str | Path) -> GGUFInfo:
    """Read a GGUF's header, once per (file, size, mtime). Raises ValueError for a file that is not GGUF."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is None:
        hit = _read(path, st.st_size)
        with _CACHE_LOCK:
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = hit
    return hit if hit.path == path else dataclasses.replace(hit, path=path)


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape in ggml order (ne[0] first: a weight is (in, out)), for checking
    an adapter against its base. Raises ValueError for a file that is not GGUF."""
    try:
        shapes: dict[str, tuple[int, ...]] = {}
        _walk(path, shapes)
        return shapes
    except ValueError as exc:
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from exc


def _read(path: Path, size: int) -> GGUFInfo:
    try:
        fields, tensors = read_header(path)
    except ValueError as exc:
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from exc

    def value(key: str) -> Any:
        return fields.get(key)

    arch = value("general.architecture")
    kind = "adapter" if value("general.type") == "adapter" else "model"
    n_embd, n_head = value(f"{arch}.embedding_length"), value(f"{arch}.attention.head_count")
    head_dim = value(f"{arch}.attention.key_length") or (n_embd // n_head if n_embd and n_head else None)
    ftype = value("general.file_type")
    quant = None
    if ftype is not None:
        quant = quantization_name(ftype)
    elif tensors:
        try:
            quant = gguf.GGMLQuantizationType(tensors[0][1]).name
        except ValueError:
            quant = f"type {tensors[0][1]}"
    n_head_kv = value(f"{arch}.attention.head_count_kv") or n_head
    if isinstance(n_head_kv, list):  # per-layer list in some architectures: the largest bounds the cache
        n_head_kv = max(n_head_kv)
    return GGUFInfo(
        path=path,
        size=size,
        architecture=arch,
        name=value("general.name"),
        kind=kind,
        parameters=sum(n for n, _ in tensors),
        quantization=quant,
        context_length=value(f"{arch}.context_length"),
        embedding_length=n_embd,
        n_layer=value(f"{arch}.block_count"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        chat_template=value("tokenizer.chat_template"),
        adapter_type=value("adapter.type") if kind == "adapter" else None,
    )


def quantization_name(file_type: Any) -> str:
    """`general.file_type` as Ollama names a quantization level: Q4_K_M, Q8_0, F16, F32."""
    try:
        name = gguf.LlamaFileType(int(file_type)).name
    except (TypeError, ValueError):
        return f"type {file_type}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def read_header(path: str | Path) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """The key/values (long arrays as None) and (n_elements, ggml type) of each tensor, uncached.

    Raises:
        ValueError: not a GGUF file, an unsupported version, or a truncated header.
    """
    return _walk(path, None)


def _walk(
    path: str | Path, shapes: dict[str, tuple[int, ...]] | None
) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    with open(path, "rb") as f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file cannot be mapped
            raise ValueError(str(exc)) from None
    try:
        return _parse(mm, shapes)
    except (struct.error, IndexError, UnicodeDecodeError, OverflowError) as exc:
        raise ValueError(f"truncated or malformed GGUF header ({exc})") from None
    finally:
        mm.close()


def _parse(
    mm: mmap.mmap, shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    if mm[:4] != b"GGUF":
        raise ValueError("no GGUF magic")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
    if version < 2:
        raise ValueError(f"GGUF version {version} is not supported")
    pos = 24
    fields: dict[str, Any] = {}
    for _ in range(n_kv):
        key, pos = _string(mm, pos)
        (vtype,) = struct.unpack_from("<I", mm, pos)
        fields[key], pos = _value(mm, pos + 4, vtype)
    tensors = []
    for _ in range(n_tensors):
        name, pos = _string(mm, pos)
        (n_dims,) = struct.unpack_from("<I", mm, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", mm, pos + 4)
        if shapes is not None:
            shapes[name] = tuple(dims)
        ttype, _offset = struct.unpack_from("<IQ", mm, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        count = 1
        for d in dims:
            count *= d
        tensors.append((count, ttype))
    return fields, tensors


def _string(mm: mmap.mmap, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", mm, pos)
    end = pos + 8 + n
    if end > len(mm):
        raise IndexError("string runs past the end of the file")
    return mm[pos + 8 : end].decode("utf-8", errors="replace"), end


def _value(mm: mmap.mmap, pos: int, vtype: int) -> tuple[Any, int]:
    if vtype in SCALARS:
        fmt = "<" + SCALARS[vtype]
        return struct.unpack_from(fmt, mm, pos)[0], pos + struct.calcsize(fmt)
    if vtype == STRING:
        return _string(mm, pos)
    if vtype != ARRAY:
        raise ValueError(f"unknown GGUF value type {vtype}")
    etype, count = struct.unpack_from("<IQ", mm, pos)
    pos += 12
    if etype in SCALARS:
        size = struct.calcsize(SCALARS[etype])
        if pos + size * count > len(mm):
            raise IndexError("array runs past the end of the file")
        keep = list(struct.unpack_from(f"<{count}{SCALARS[etype]}", mm, pos)) if count <= MAX_ARRAY else None
        return keep, pos + size * count
    if etype == STRING:  # e.g. the vocabulary: step over each string
        for _ in range(count):
            (n,) = struct.unpack_from("<Q", mm, pos)
            pos += 8 + n
        if pos > len(mm):
            raise IndexError("array runs past the end of the file")
        return None, pos
    values = []
    for _ in range(count):  # arrays of arrays: rare; walk them
        item, pos = _value(mm, pos, etype)
        values.append(item)
    return (values if count <= MAX_ARRAY else None), pos
