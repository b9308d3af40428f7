"""Human-readable counts and sizes: the one home for formatting them (as Ollama's `format` package).

Two byte styles, because Ollama uses both: decimal units for model sizes in `list`/`ps`/`show`
(HumanBytes: 1.2 GB) and binary ones for memory (HumanBytes2: 5.5 GiB), where the figure is
compared with what the operating system reports.
"""

from __future__ import annotations


def count(n: int) -> str:
    """A parameter count the way Ollama's `parameter_size` reads: 108.74K, 494.03M, 1.5B, 7.6B."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.{1 if unit in 'TB' else 2}f}{unit}"
    return str(n)


def size(n: int) -> str:
    """A file or model size in decimal units: 512 B, 1.5 KB, 986.0 MB, 1.2 GB."""
    return _scaled(n, 1000, ("B", "KB", "MB", "GB", "TB"))


def memory(n: int) -> str:
    """An amount of memory in binary units: 512 B, 1.5 KiB, 94.0 MiB, 5.5 GiB."""
    return _scaled(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB"))


def _scaled(n: int, base: int, names: tuple[str, ...]) -> str:
    value = float(n)
    for unit in names[:-1]:
        if value < base:
            return f"{value:.0f} {unit}" if unit == names[0] else f"{value:.1f} {unit}"
        value /= base
    return f"{value:.1f} {names[-1]}"
