"""A GGUF header reader that skips what `show` and the memory estimate never need.

The `gguf` package's GGUFReader builds numpy views for every element of every array,
so a 150k-token vocabulary costs seconds; this reader walks the same layout (GGUF v2/v3:
little-endian counts, key/value pairs, then tensor descriptions) with struct over a
memory map, keeps scalars, strings and small numeric arrays, and steps over the rest.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

# GGUF value types: id -> struct format of one element (8 = string, 9 = array).
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
MAX_ARRAY = 4096  # numeric arrays up to this length are kept (per-layer head counts); longer are skipped


def read_header(path: str | Path) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """The key/values (long arrays as None) and (n_elements, ggml type) of each tensor.

    Raises:
        ValueError: not a GGUF file, an unsupported version, or a truncated header.
    """
    return _walk(path, None)


def read_tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's name and dimensions (ggml order, ne[0] first), from the same walk.

    Raises:
        ValueError: as read_header.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    _walk(path, shapes)
    return shapes


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
