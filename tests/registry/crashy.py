"""Run the `nanocommander` CLI and kill -9 it just before its Nth write to the store.

    CRASH_ROOT=<store> CRASH_AT=N python crashy.py pull recipe.yaml

Every call that changes the file system under CRASH_ROOT (open for writing, rename,
link, unlink, mkdir, rmdir) raises a Python audit event before it happens; the Nth one
sends SIGKILL to the whole process, so the store is left exactly as a kill at that
moment would leave it. CRASH_AT=0 only counts, writing the count to CRASH_COUNT_FILE.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys

ROOT = os.path.realpath(os.environ["CRASH_ROOT"])
AT = int(os.environ.get("CRASH_AT", "0"))
COUNT_FILE = os.environ.get("CRASH_COUNT_FILE")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.rename": 2, "os.link": 2, "os.symlink": 2, "os.remove": 1, "os.mkdir": 1, "os.rmdir": 1}
count = 0


def _under_root(path: object) -> bool:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return False  # a file descriptor
    return os.path.realpath(os.path.abspath(path)).startswith(ROOT)


def _writes(event: str, args: tuple) -> bool:
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
        return writing and _under_root(path)
    n = PATH_EVENTS.get(event)
    return n is not None and any(_under_root(p) for p in args[:n])


def hook(event: str, args: tuple) -> None:
    global count
    if event in PATH_EVENTS or event == "open":
        if _writes(event, args):
            count += 1
            if count == AT:
                os.kill(os.getpid(), signal.SIGKILL)


if COUNT_FILE:
    atexit.register(lambda: open(COUNT_FILE, "w").write(str(count)))  # noqa: SIM115
sys.addaudithook(hook)

from nanocommander.cli import main  # noqa: E402

sys.argv[0] = "nanocommander"
sys.exit(main())
