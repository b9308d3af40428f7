"""llama.cpp's own log lines (load chatter, `lora ... cannot use buft` warnings): shown only when asked.

llama-cpp-python's callback maps ggml's log levels with an outdated table (WARN is read
as ERROR), so adapter warnings reach stderr on every load. This callback drops every
message unless `--verbose` or NANOCOMMANDER_DEBUG asked for them. The callback is
process-wide in llama.cpp, so its switch is too.
"""

from __future__ import annotations

import ctypes
import os
import sys

import llama_cpp

_state = {"verbose": False}


@llama_cpp.llama_log_callback
def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if _state["verbose"]:
        sys.stderr.write(text.decode("utf-8", errors="replace"))
        sys.stderr.flush()


def debug_env() -> bool:
    return os.environ.get("NANOCOMMANDER_DEBUG", "") not in ("", "0", "false")


def install(verbose: bool | None = None) -> None:
    """Route llama.cpp's log through our callback; verbose None keeps the current setting."""
    if verbose is not None:
        _state["verbose"] = verbose
    _state["verbose"] = _state["verbose"] or debug_env()
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def verbose() -> bool:
    """Whether llama.cpp's log is shown (runners are started with the same setting)."""
    return _state["verbose"] or debug_env()
