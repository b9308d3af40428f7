"""ctypes access to ggml's device registry and RPC backend, inside llama-cpp-python's own libraries.

The RPC backend is part of the installed llama-cpp-python when it was built with
`CMAKE_ARGS="-DGGML_RPC=ON"`; nothing here is compiled separately, so client and
`nanocommander rpc-server` always run the same llama.cpp. The RPC entry points are
looked up through the backend registry (`ggml_backend_reg_get_proc_address`), as
llama.cpp's own tools do.
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache
from pathlib import Path

import llama_cpp

from nanocommander.errors import ModelLoadError

P = ctypes.c_void_p
REBUILD_HINT = (
    'reinstall it with the RPC backend: CMAKE_ARGS="-DGGML_RPC=ON" pip install --force-reinstall '
    f"--no-cache-dir --no-deps llama-cpp-python=={llama_cpp.__version__}"
)
DEVICE_CPU, DEVICE_GPU, DEVICE_ACCEL, DEVICE_IGPU = 0, 1, 2, 3
ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
ADD_SERVER = ctypes.CFUNCTYPE(P, ctypes.c_char_p)
START_SERVER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, P)
# Protocol version of the RPC backend this module was written against; read from the library when it can be.
FALLBACK_PROTOCOL = (7, 0, 0)


def _open(stem: str) -> ctypes.CDLL:
    """The copy of lib<stem> that llama_cpp already loaded.

    The wheel ships libggml.so, libggml.so.0 and libggml.so.0.x as separate files, not
    links: opening another one would load a second copy with its own globals (abort
    callback, connection table). Asking for the soname finds the loaded one.
    """
    libdir = Path(llama_cpp.__file__).parent / "lib"
    names = [f"lib{stem}.so.0", f"lib{stem}.0.dylib"] if sys.platform != "win32" else []
    mode = getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL
    for name in names:
        try:
            return ctypes.CDLL(name, mode=mode)
        except OSError:
            continue
    for name in (f"lib{stem}.so.0", f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll"):
        if (libdir / name).exists():
            return ctypes.CDLL(str(libdir / name), mode=ctypes.RTLD_GLOBAL)
    raise OSError(f"lib{stem} not found next to llama_cpp")


class Ggml:
    """The few ggml functions NanoCommander needs, bound once."""

    def __init__(self) -> None:
        llama_cpp.llama_backend_init()  # loads libllama and with it libggml*
        libs = [_open("ggml"), _open("ggml-base")]
        try:
            libs.append(_open("ggml-rpc"))
        except OSError:
            pass
        self.libs = libs

        def fn(name: str, res, *args):
            for lib in libs:
                f = getattr(lib, name, None)
                if f is not None:
                    f.restype, f.argtypes = res, list(args)
                    return f
            raise OSError(f"{name} not found in llama-cpp-python's ggml")

        self.reg_by_name = fn("ggml_backend_reg_by_name", P, ctypes.c_char_p)
        self.reg_proc = fn("ggml_backend_reg_get_proc_address", P, P, ctypes.c_char_p)
        self.reg_dev_count = fn("ggml_backend_reg_dev_count", ctypes.c_size_t, P)
        self.reg_dev_get = fn("ggml_backend_reg_dev_get", P, P, ctypes.c_size_t)
        self.dev_count = fn("ggml_backend_dev_count", ctypes.c_size_t)
        self.dev_get = fn("ggml_backend_dev_get", P, ctypes.c_size_t)
        self.dev_by_type = fn("ggml_backend_dev_by_type", P, ctypes.c_int)
        self.dev_type = fn("ggml_backend_dev_type", ctypes.c_int, P)
        self.dev_name = fn("ggml_backend_dev_name", ctypes.c_char_p, P)
        self.dev_description = fn("ggml_backend_dev_description", ctypes.c_char_p, P)
        self.dev_memory = fn(
            "ggml_backend_dev_memory",
            None,
            P,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_size_t),
        )
        self.set_abort_callback = fn("ggml_set_abort_callback", P, ABORT_CALLBACK)
        self.rpc_reg = self.reg_by_name(b"RPC")
        self.add_server = self._proc("ggml_backend_rpc_add_server", ADD_SERVER)
        self.start_server = self._proc("ggml_backend_rpc_start_server", START_SERVER)

    def _proc(self, name: str, kind):
        if not self.rpc_reg:
            return None
        addr = self.reg_proc(self.rpc_reg, name.encode())
        return kind(addr) if addr else None

    @property
    def has_rpc(self) -> bool:
        return self.add_server is not None and self.start_server is not None

    def local_gpus(self) -> list[int]:
        """Local accelerators llama.cpp would offload to by default (none on a CPU-only build)."""
        return [
            d
            for d in (self.dev_get(i) for i in range(self.dev_count()))
            if self.dev_type(d) in (DEVICE_GPU, DEVICE_IGPU)
        ]

    def memory(self, dev: int) -> tuple[int, int]:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value


@cache
def ggml() -> Ggml:
    return Ggml()


def require_rpc() -> Ggml:
    """The bindings, or a ModelLoadError saying how to get an RPC-enabled llama-cpp-python."""
    lib = ggml()
    if not lib.has_rpc:
        raise ModelLoadError(
            f"llama-cpp-python {llama_cpp.__version__} was built without ggml's RPC backend; {REBUILD_HINT}"
        )
    return lib


def rpc_available() -> bool:
    try:
        return ggml().has_rpc
    except OSError:
        return False


@cache
def protocol_version() -> tuple[int, int, int]:
    """The RPC protocol the installed library speaks, read from its own HELLO handler.

    `rpc_server::hello` only fills the version fields of its argument (it never touches
    `this`), so calling it with a scratch buffer answers exactly what a server built from
    this library would say. Falls back to the version this module was written against.
    """
    for lib in ggml().libs:
        f = getattr(lib, "_ZN10rpc_server5helloER17rpc_msg_hello_rsp", None)
        if f is not None:
            f.restype, f.argtypes = None, [P, P]
            rsp = (ctypes.c_uint8 * 64)()
            f(None, ctypes.addressof(rsp))
            return rsp[0], rsp[1], rsp[2]
    return FALLBACK_PROTOCOL
