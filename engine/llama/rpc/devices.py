"""A member's layers on other machines, through llama.cpp's RPC backend (ggml-rpc).

A member that names RPC servers (`rpc: ["10.0.0.5:50052"]`, or NANOCOMMANDER_RPC for
large members) is loaded with llama_model_params.devices set to those servers' devices
(and any local GPU), so llama.cpp splits its layers over them as `llama-server --rpc`
does; layers beyond gpu_layers stay on the local CPU. Each server is checked first with
a TCP connect and ggml-rpc's own HELLO under short timeouts, because llama.cpp's client
would block forever on a busy server or abort() the process on an unreachable one.

A connection lost later is worse: ggml-rpc calls GGML_ABORT on any failed send or
receive, in its dispatcher thread. The server installs an abort handler that names the
lost servers, wakes the requests waiting on them (`guard`), and then parks that thread
for good instead of returning into abort(). The model it served can never be touched
again (its buffers, locks and threads wait on the parked thread), so it is *stranded*:
kept referenced, never freed, and reloaded afresh (under a new connection) on the next
request. Outside the server (`nanocommander run`, scripts) the handler prints why and
exits, since there is nothing to keep serving.

llama.cpp keeps its RPC connections in process-wide tables keyed by the endpoint
string; the bookkeeping here mirrors that, in one `_Links` object.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import socket
import struct
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import llama_cpp

from nanocommander.engine.llama.rpc.lib import ABORT_CALLBACK, P, ggml, protocol_version, require_rpc
from nanocommander.engine.request.endpoints import Endpoint, default_servers, parse_endpoint
from nanocommander.errors import ModelLoadError, RpcServerLost

CONNECT_TIMEOUT = 3.0  # seconds for a TCP connect to a server
HELLO_TIMEOUT = 5.0  # seconds for a free server to answer the handshake
LOSS_PROBE_TIMEOUT = 1.5  # seconds, when telling the lost server from the healthy ones
HELLO_CMD, CONN_CAPS = 14, 24  # ggml-rpc's HELLO command and its capability block (protocol 3+)
log = logging.getLogger("nanocommander.rpc")


@dataclass(frozen=True)
class Placement:
    """Where a model's offloaded layers go: RPC servers, optionally split by `tensor_split`."""

    servers: tuple[str, ...]
    tensor_split: tuple[float, ...] = ()


def placement(spec: Any) -> Placement | None:
    """The placement of a recipe member (a MemberSpec), or None for an all-local member."""
    servers = tuple(spec.rpc) or (default_servers() if spec.role == "large" else ())
    return Placement(servers, tuple(spec.tensor_split)) if servers else None


# -- the handshake ----------------------------------------------------------------------------


class Silent(Exception):
    """The server accepted the connection but did not answer (it serves one client at a time)."""


class HungUp(Exception):
    """The server closed the connection during the handshake (it speaks another protocol version)."""


def hello(ep: Endpoint, *, connect_timeout: float = CONNECT_TIMEOUT, answer_timeout: float = HELLO_TIMEOUT):
    """ggml-rpc's HELLO: returns the server's (major, minor, patch).

    Raises:
        OSError: unreachable (refused, no route, timeout, unknown host).
        Silent: connected, but no answer within answer_timeout.
        HungUp: the server closed the connection during the handshake (another protocol version).
    """
    with socket.create_connection((ep.host, ep.port), timeout=connect_timeout) as sock:
        sock.settimeout(answer_timeout)
        try:
            sock.sendall(bytes([HELLO_CMD]) + struct.pack("<Q", CONN_CAPS) + bytes(CONN_CAPS))
            head = _recv(sock, 8)
            size = struct.unpack("<Q", head)[0]
            if size < 3:
                raise HungUp("malformed HELLO answer")
            body = _recv(sock, min(size, 64))
        except TimeoutError:
            raise Silent() from None
        except OSError as exc:  # closed or reset after connecting: the server refused the handshake
            raise HungUp(str(exc)) from None
        return body[0], body[1], body[2]


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise HungUp("closed during the handshake")
        data += part
    return data


def check_server(ep: Endpoint, *, held: bool) -> None:
    """Raise ModelLoadError naming `ep` unless llama.cpp can connect to it without blocking or aborting.

    `held`: this process already holds a connection to it (llama.cpp shares one per
    endpoint), so the single-client server cannot answer a second HELLO; only connect.
    """

    ours = protocol_version()
    try:
        if held:
            socket.create_connection((ep.host, ep.port), timeout=CONNECT_TIMEOUT).close()
            return
        theirs = hello(ep)
    except Silent:
        raise ModelLoadError(
            f"RPC server {ep} accepted the connection but did not answer within {HELLO_TIMEOUT:.0f}s; "
            "rpc-server serves one client at a time: is another program (or this one, under another "
            "host name) connected to it?"
        ) from None
    except HungUp:
        raise ModelLoadError(
            f"RPC server {ep} hung up during the handshake: it runs another llama.cpp version "
            f"(this side: llama-cpp-python {llama_cpp.__version__}, RPC protocol {_v(ours)}); install the "
            "same llama-cpp-python version on both machines"
        ) from None
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ModelLoadError(
            f"cannot reach RPC server {ep}: {reason}; is `nanocommander rpc-server` running there and "
            "the port reachable (SSH tunnel or private network)?"
        ) from None
    if theirs[0] != ours[0] or theirs[1] > ours[1]:
        raise ModelLoadError(
            f"RPC server {ep} speaks RPC protocol {_v(theirs)}, this side {_v(ours)} (llama-cpp-python "
            f"{llama_cpp.__version__}); install the same llama-cpp-python version on both machines"
        )


def _v(version: Sequence[int]) -> str:
    return ".".join(str(x) for x in version)


# -- connection bookkeeping -------------------------------------------------------------------


class _Links:
    """This process's RPC connections, as llama.cpp keys them (by endpoint string), and their losses."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # short sections only: the abort handler takes it too
        self.connecting = threading.Lock()  # held across checks and llama.cpp's first connect
        self.generation: dict[Endpoint, int] = {}  # bumped when a connection is lost
        self.users: dict[str, int] = {}  # endpoint string -> live models using it
        self.lost: set[str] = set()
        self.stranded: list[Any] = []  # never freed: their memory is owned by a parked thread
        self.waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.keep_serving = False
        self.handler: Any = None

    def key(self, ep: Endpoint) -> str:
        """The endpoint string llama.cpp sees. After a loss, llama.cpp's table still maps the plain
        string to the dead connection (its users are stranded, not freed), so a fresh connection is
        asked for under an equivalent spelling: the port with leading zeros, which it parses alike."""
        n = self.generation.get(ep, 0)
        return f"{ep.host}:{'0' * n}{ep.port}"

    def endpoint(self, key: str) -> Endpoint:
        host, _, port = key.rpartition(":")
        return Endpoint(host, int(port))

    def mark_lost(self, keys: set[str]) -> None:
        with self.lock:
            for key in keys - self.lost:
                self.lost.add(key)
                ep = self.endpoint(key)
                self.generation[ep] = self.generation.get(ep, 0) + 1
        for loop, event in list(self.waiters):
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(event.set)

    def find_lost(self, message: str) -> set[str]:
        """Which connections a GGML_ABORT from ggml-rpc was about.

        Connect and handshake failures name their endpoint. A failed send or receive does not,
        so every server in use is probed: refused or unreachable means lost, and so does one that
        answers a fresh HELLO (a restarted server: ours is gone); a server still busy with our
        connection stays silent. If none looks lost, all are taken as lost rather than hang.
        """
        named = re.search(r"(?:connect to|handshake failed for) (\S+)", message)
        if named:
            return {named.group(1)}
        with self.lock:
            keys = [k for k, n in self.users.items() if n > 0 and k not in self.lost]

        def dead(key: str) -> bool:
            try:
                hello(
                    self.endpoint(key), connect_timeout=LOSS_PROBE_TIMEOUT, answer_timeout=LOSS_PROBE_TIMEOUT
                )
            except Silent:
                return False
            except (OSError, HungUp):
                return True
            return True

        if not keys:
            return set()
        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            found = {k for k, d in zip(keys, pool.map(dead, keys), strict=True) if d}
        return found or set(keys)


_links = _Links()


def keep_serving_on_loss(on: bool = True) -> None:
    """In a server: survive a lost RPC server (strand its models) instead of exiting the process."""
    _links.keep_serving = on


def _on_abort(message: bytes | None) -> None:
    text = (message or b"").decode("utf-8", "replace")
    if "ggml-rpc" not in text:
        return  # not ours: ggml prints nothing more here, then abort()s as always
    lost = _links.find_lost(text)
    names = ", ".join(sorted(str(_links.endpoint(k)) for k in lost)) or "an RPC server"
    print(
        f"nanocommander: lost the connection to RPC server {names} ({text.rsplit(': ', 1)[-1]})",
        file=sys.stderr,
    )
    if not _links.keep_serving:
        print(
            "nanocommander: llama.cpp's RPC client cannot continue in this process; exiting", file=sys.stderr
        )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
    _links.mark_lost(lost)
    threading.Event().wait()  # never return: ggml would abort() the whole server


def _install_abort_handler() -> None:

    with _links.lock:
        if _links.handler is None:
            _links.handler = ABORT_CALLBACK(_on_abort)  # kept referenced for the life of the process
            ggml().set_abort_callback(_links.handler)


# -- devices for llama_model_params -----------------------------------------------------------


class RpcDevices:
    """The devices one model offloads to (its RPC servers' devices, then local GPUs), written into
    llama_model_params; keeps the arrays llama.cpp reads alive and counts the connections in use."""

    def __init__(self, placement: Placement, params: Any):

        lib = require_rpc()
        _install_abort_handler()
        self.placement = placement
        self.keys: list[str] = []
        devices: list[int] = []
        with (
            _links.connecting
        ):  # one check-and-connect at a time: a second HELLO to a held server would stall
            for text in placement.servers:
                ep = parse_endpoint(text)
                key = _links.key(ep)
                check_server(ep, held=_links.users.get(key, 0) > 0)
                reg = lib.add_server(key.encode())
                if not reg:
                    raise ModelLoadError(f"RPC server {ep} offers no devices")
                devices += [lib.reg_dev_get(reg, i) for i in range(lib.reg_dev_count(reg))]
                self.keys.append(key)
            with _links.lock:
                for key in self.keys:
                    _links.users[key] = _links.users.get(key, 0) + 1
        self._release = weakref.finalize(self, _release, list(self.keys))
        devices += lib.local_gpus()
        self.names = [lib.dev_name(d).decode() + f" ({lib.dev_description(d).decode()})" for d in devices]
        self._devices = (P * (len(devices) + 1))(*devices, None)
        params.devices = ctypes.addressof(self._devices)
        if params.n_gpu_layers == 0:  # naming servers means offloading: all layers unless gpu_layers says
            params.n_gpu_layers = 0x7FFFFFFF
        split = placement.tensor_split
        if split:
            if len(split) > len(devices):
                raise ModelLoadError(
                    f"tensor_split has {len(split)} entries for {len(devices)} devices: {', '.join(self.names)}"
                )
            self._split = (ctypes.c_float * llama_cpp.llama_max_devices())(*split)
            params.tensor_split = self._split

    @property
    def servers(self) -> list[Endpoint]:
        return [_links.endpoint(k) for k in self.keys]

    @property
    def lost(self) -> list[Endpoint]:
        return [_links.endpoint(k) for k in self.keys if k in _links.lost]

    def close(self) -> None:
        self._release()


def _release(keys: list[str]) -> None:
    with _links.lock:
        for key in keys:
            _links.users[key] = _links.users.get(key, 1) - 1


# -- lost servers, seen from the server ----------------------------------------------------------


def _models(obj: Any) -> list[Any]:
    """The LoadedModels of a Composite, an Embedder (its `.model`) or a LoadedModel itself."""
    members = getattr(obj, "members", None)
    if isinstance(members, dict):
        return [m.model for m in members.values()]
    model = getattr(obj, "model", None)
    return [model] if hasattr(model, "rpc") else [obj]


def lost_servers(obj: Any) -> list[Endpoint]:
    """The lost RPC servers of a LoadedModel or Composite (empty if all are well, or it has none)."""
    out: list[Endpoint] = []
    for model in _models(obj):
        devices = getattr(model, "rpc", None)
        if devices is not None:
            out += [ep for ep in devices.lost if ep not in out]
    return out


def is_lost(obj: Any) -> bool:
    return bool(lost_servers(obj))


def strand(obj: Any) -> None:
    """Keep `obj` referenced for good: freeing it would wait forever on its parked connection."""
    with _links.lock:
        _links.stranded.append(obj)


def close_or_strand(obj: Any) -> None:
    """Close a Composite (or LoadedModel), unless one of its RPC servers is gone: freeing remote
    buffers over a dead connection would park the closing thread too. Servers are checked first;
    one lost during the close itself strands the object and returns."""
    devices = [m.rpc for m in _models(obj) if getattr(m, "rpc", None) is not None]
    for key in {k for d in devices for k in d.keys if k not in _links.lost}:
        try:
            socket.create_connection(_links.endpoint(key).address, timeout=LOSS_PROBE_TIMEOUT).close()
        except OSError:
            _links.mark_lost({key})
    if not devices:
        obj.close()
        return
    closed = threading.Event()
    threading.Thread(target=lambda: (obj.close(), closed.set()), daemon=True, name="rpc-close").start()
    while not closed.wait(0.2):
        if is_lost(obj):
            break
    if is_lost(obj):
        strand(obj)


def stranded() -> bool:
    """Whether threads are parked in this process (then only os._exit ends it promptly)."""
    return bool(_links.stranded) or bool(_links.lost)


def _lost_error(obj: Any) -> RpcServerLost:
    names = ", ".join(str(ep) for ep in lost_servers(obj))
    return RpcServerLost(
        f"lost the connection to RPC server {names}; the model is loaded again on the next request"
    )


async def guard(composite: Any, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Yield from `stream`, but end with RpcServerLost as soon as one of `composite`'s RPC servers is
    lost: its generation thread is then blocked inside llama.cpp for good and would never answer."""
    if not any(getattr(m, "rpc", None) is not None for m in _models(composite)):
        async for item in stream:
            yield item
        return
    if is_lost(composite):
        raise _lost_error(composite)
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    waiter = (loop, event)
    _links.waiters.add(waiter)
    alarm = asyncio.ensure_future(event.wait())
    step: asyncio.Future | None = None
    abandoned = False
    try:
        while True:
            step = asyncio.ensure_future(stream.__anext__())
            await asyncio.wait({step, alarm}, return_when=asyncio.FIRST_COMPLETED)
            if step.done():
                try:
                    item = step.result()
                except StopAsyncIteration:
                    return
                step = None
                yield item
                continue
            if is_lost(composite):
                abandoned = True
                strand((step, stream))  # the step waits on a parked thread; never collect or close it
                raise _lost_error(composite)
            event.clear()  # another model's server: keep going
            alarm = asyncio.ensure_future(event.wait())
    finally:
        _links.waiters.discard(waiter)
        alarm.cancel()
        if not abandoned:
            if step is not None and not step.done():
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
            await stream.aclose()  # type: ignore[attr-defined]
