"""Server settings, read once at startup from the command line and the environment (Ollama's habits)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nanocommander.backend.guard import is_loopback, origin_allowed
from nanocommander.engine.request.endpoints import parse_servers

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 11434


def parse_host(value: str | None) -> tuple[str, int]:
    """`host`, `host:port`, `:port` or `http://host:port`, as OLLAMA_HOST accepts."""
    if not value:
        return DEFAULT_HOST, DEFAULT_PORT
    value = value.split("://", 1)[-1].rstrip("/")
    host, _, port = value.rpartition(":") if value.count(":") == 1 or value.startswith("[") else ("", "", "")
    if not _:
        return value or DEFAULT_HOST, DEFAULT_PORT
    return (host.strip("[]") or DEFAULT_HOST), int(port)


def parse_duration(value: object, default: float) -> float:
    """Ollama keep_alive: seconds as a number, or "5m", "1h30m", "10s", "-1"; negative means forever."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a number or a duration string")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    total, num = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch in ".-":
            num += ch
            i += 1
            continue
        unit = "ms" if text[i : i + 2] == "ms" else ch
        if unit not in units or not num:
            raise ValueError(f"invalid duration {value!r}")
        total += float(num) * units[unit]
        num = ""
        i += len(unit)
    if num:
        raise ValueError(f"invalid duration {value!r}")
    return total


def _positive(env: os._Environ[str], key: str, default: int) -> int:
    text = env.get(key, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{key} must be a positive integer, got {text!r}")
    return int(text)


def _servers(env: os._Environ[str]) -> None:
    """NANOCOMMANDER_RPC is read at each model load (engine/llama/rpc/devices.py); a typo should stop startup, though."""
    try:
        parse_servers(env.get("NANOCOMMANDER_RPC", ""))
    except ValueError as exc:
        raise ValueError(f"NANOCOMMANDER_RPC: {exc}") from None


@dataclass
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    kobold_port: int | None = None
    origins: list[str] = field(default_factory=list)
    api_key: str | None = None
    insecure_no_auth: bool = False
    keep_alive: float = 300.0
    num_parallel: int = 4  # slots per model: requests decoded together in one batch
    max_queue: int = 512
    max_body: int = 32 * 1024 * 1024
    family_slots: int = 3  # tuned contexts per adapter family (engine/runtime/family.py)
    default_model: str | None = None
    recipes: list[str] = field(default_factory=list)
    # each loaded composite (or adapter family) in a runner process of its own (engine/runtime/runner);
    # NANOCOMMANDER_RUNNERS=0 serves them in the server's own process
    runners: bool = field(default_factory=lambda: os.environ.get("NANOCOMMANDER_RUNNERS", "1") != "0")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """NANOCOMMANDER_HOST, _ORIGINS, _API_KEY, _KEEP_ALIVE (5m), _NUM_PARALLEL (4), _MAX_QUEUE (512),
        _FAMILY_SLOTS (3); keyword overrides (from the command line) win. A malformed value stops startup
        with its name."""
        env = os.environ
        try:
            host, port = parse_host(env.get("NANOCOMMANDER_HOST"))
            keep_alive = parse_duration(env.get("NANOCOMMANDER_KEEP_ALIVE"), 300.0)
            num_parallel = _positive(env, "NANOCOMMANDER_NUM_PARALLEL", 4)
            max_queue = _positive(env, "NANOCOMMANDER_MAX_QUEUE", 512)
            family_slots = _positive(env, "NANOCOMMANDER_FAMILY_SLOTS", 3)
            _servers(env)
        except ValueError as exc:
            raise SystemExit(f"bad server setting: {exc}") from None
        s = cls(
            host=host,
            port=port,
            origins=[o.strip() for o in env.get("NANOCOMMANDER_ORIGINS", "").split(",") if o.strip()],
            api_key=env.get("NANOCOMMANDER_API_KEY") or None,
            keep_alive=keep_alive,
            num_parallel=num_parallel,
            max_queue=max_queue,
            family_slots=family_slots,
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(s, key, value)
        return s

    def check(self) -> None:
        """Refuse to expose an unauthenticated server beyond loopback unless explicitly waived."""
        if not is_loopback(self.host) and not self.api_key and not self.insecure_no_auth:
            raise SystemExit(
                f"refusing to listen on {self.host} without NANOCOMMANDER_API_KEY; set a key, or pass "
                "--insecure-no-auth if this network is trusted"
            )

    def origin_allowed(self, origin: str) -> bool:
        """Whether a browser page of `origin` may call the server (rules in backend/guard.py)."""
        return origin_allowed(origin, self.origins)
