"""`nanocommander rpc-server`: lend this machine's CPU or GPU to a NanoCommander elsewhere.

It runs llama.cpp's own RPC server (`ggml_backend_rpc_start_server`) from the installed
llama-cpp-python, in this process: no separate binary to build, and always the same
llama.cpp as the client side of the same install. The server has no authentication:
anyone who reaches its port can allocate memory and run computations on this machine,
so it binds to loopback unless told otherwise; reach it through an SSH tunnel.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import sys
import threading

import llama_cpp

from nanocommander.backend.guard import is_loopback
from nanocommander.engine.llama.rpc.lib import DEVICE_ACCEL, DEVICE_CPU, protocol_version, require_rpc
from nanocommander.engine.request.endpoints import DEFAULT_PORT

NO_AUTH_WARNING = (
    "WARNING: rpc-server has no authentication and no encryption. Anyone who can reach {where} can use "
    "this machine's memory and compute and read what it computes. Expose it only on a private network, "
    "or keep the default 127.0.0.1 and connect through an SSH tunnel (ssh -L {port}:127.0.0.1:{port} HOST)."
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rpc-server", help="serve this machine's CPU/GPU to a large member elsewhere (llama.cpp RPC)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: use an SSH tunnel)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--threads", type=int, help="CPU threads for computing (default: all cores)")
    p.add_argument(
        "--mem", type=int, metavar="MIB", help="memory to report to clients, in MiB (default: the device's)"
    )
    p.add_argument("--device", help="comma-separated ggml devices to serve (default: the GPUs, else the CPU)")
    p.add_argument(
        "--cache", metavar="DIR", help="keep received weights in DIR so a reload skips sending them"
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding beyond loopback (the server has no authentication)",
    )
    p.set_defaults(func=serve_rpc)


def serve_rpc(args: argparse.Namespace) -> int:

    where = f"{args.host}:{args.port}"
    if not 0 < args.port < 65536 or (args.threads is not None and args.threads < 1) or (args.mem or 1) < 1:
        print("Error: --port must be 1-65535, --threads and --mem positive", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        if not args.allow_remote:
            print(
                f"Error: refusing to listen on {args.host}: rpc-server has no authentication. Keep 127.0.0.1 and "
                f"use an SSH tunnel (ssh -L {args.port}:127.0.0.1:{args.port} HOST), or pass --allow-remote "
                "on a trusted private network.",
                file=sys.stderr,
            )
            return 2
        print(NO_AUTH_WARNING.format(where=where, port=args.port), file=sys.stderr)
    lib = require_rpc()
    devices = _devices(lib, args.device)
    if args.mem:
        for dev in devices:
            _report_memory(lib, dev, args.mem * 2**20)
    try:  # fail here, in words, rather than in llama.cpp's "Failed to create server socket"
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as exc:
        print(f"Error: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    threads = args.threads or max(1, os.cpu_count() or 1)
    array = (ctypes.c_void_p * len(devices))(*devices)
    cache = args.cache.encode() if args.cache else None
    names = ", ".join(lib.dev_name(d).decode() for d in devices)
    print(
        f"nanocommander rpc-server on {where}: {names}, {threads} threads (llama-cpp-python "
        f"{llama_cpp.__version__}, RPC protocol {'.'.join(map(str, protocol_version()))}); Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    # llama.cpp's accept loop never returns; a daemon thread keeps Ctrl-C working in the main thread.
    worker = threading.Thread(
        target=lib.start_server,
        args=(where.encode(), cache, threads, len(devices), ctypes.addressof(array)),
        daemon=True,
    )
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.5)
    except KeyboardInterrupt:
        return 0
    print(f"Error: the RPC server on {where} stopped", file=sys.stderr)
    return 1


def _devices(lib, names: str | None) -> list[int]:

    all_devices = [lib.dev_get(i) for i in range(lib.dev_count())]
    if names:
        by_name = {lib.dev_name(d).decode().lower(): d for d in all_devices}
        wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise SystemExit(
                f"Error: unknown device {', '.join(missing)}; this machine has {', '.join(by_name)}"
            )
        return [by_name[n] for n in wanted]
    gpus = [d for d in all_devices if lib.dev_type(d) not in (DEVICE_CPU, DEVICE_ACCEL)]
    return gpus or [lib.dev_by_type(DEVICE_CPU)]


GET_MEMORY = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
)
NAME = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
_kept: list = []


def _report_memory(lib, dev: int, size: int) -> None:
    """Make `dev` report `size` bytes free and total, as rpc-server's removed --mem did.

    Clients size their automatic layer split by the memory each server reports. ggml has no
    setter for it, so the device's get_memory entry is replaced. ggml_backend_device starts
    with its interface table (get_name, get_description, get_memory, ...): the first two
    entries are checked against the public accessors before the third is touched.
    """
    table = ctypes.cast(dev, ctypes.POINTER(ctypes.c_void_p))
    get_name = ctypes.cast(table[0], NAME)
    get_description = ctypes.cast(table[1], NAME)
    name, description = ctypes.c_char_p(get_name(dev)).value, ctypes.c_char_p(get_description(dev)).value
    if name != lib.dev_name(dev) or description != lib.dev_description(dev):
        raise SystemExit("Error: --mem is not supported by this llama.cpp build; leave it out")

    def get_memory(_dev, free, total) -> None:
        free[0] = total[0] = size

    callback = GET_MEMORY(get_memory)
    _kept.append(callback)
    table[2] = ctypes.cast(callback, ctypes.c_void_p).value
    if lib.memory(dev) != (size, size):
        raise SystemExit("Error: --mem is not supported by this llama.cpp build; leave it out")
