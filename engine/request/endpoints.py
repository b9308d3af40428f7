"""Where a member's layers may go: llama.cpp RPC server addresses, as a recipe or NANOCOMMANDER_RPC names them.

Only the syntax lives here (a request-level check, so a recipe with a bad address fails when it
is read); reaching the servers is engine/llama/rpc/devices.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from nanocommander.errors import ModelLoadError

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default


@dataclass(frozen=True, order=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


def parse_endpoint(text: str) -> Endpoint:
    """`host:port` (port 50052 if omitted). IPv6 literals are refused: ggml-rpc splits at the first ':'."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    if ":" in host or "[" in host:
        raise ValueError(
            f"IPv6 literals are not supported by llama.cpp's RPC endpoints, got {text!r}; use a host name"
        )
    if not host or any(c in host for c in "/] ") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port (an IPv4 address or a host name), got {text!r}")
    return Endpoint(host, int(port))


def parse_servers(value: str | Sequence[str]) -> tuple[str, ...]:
    """A list of endpoints, or one comma-separated string as llama.cpp's --rpc takes; normalized."""
    items = value.split(",") if isinstance(value, str) else list(value)
    servers = tuple(str(parse_endpoint(v)) for v in items if str(v).strip())
    if len(set(servers)) != len(servers):
        raise ValueError("an RPC server is listed twice")
    return servers


def default_servers() -> tuple[str, ...]:
    """NANOCOMMANDER_RPC: the servers a large member uses when its recipe names none."""
    text = os.environ.get("NANOCOMMANDER_RPC", "")
    try:
        return parse_servers(text)
    except ValueError as exc:
        raise ModelLoadError(f"NANOCOMMANDER_RPC: {exc}") from None
