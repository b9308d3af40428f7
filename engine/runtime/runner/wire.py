"""The runner's messages: tuples over a multiprocessing Connection (length-prefixed pickles).

Server -> runner                                   runner -> server
  (OPEN, rid, vid, recipe, options)                  (RET, rid, value)       a call's answer
  (CALL, rid, vid, method, args, kwargs)             (ERR, rid, packed)      a call's or stream's error
  (GEN, rid, vid, GenerateRequest)                   (CHUNK, rid, Chunk)     a stream's next chunk
  (CANCEL, rid)  (CREDIT, rid, n)                    (BEAT, rounds)          alive, and how far it got
  (CLOSE, rid, vid)  (STOP,)

Tuples, not dataclasses: a chunk is sent per token, and the tuple's pickle is the smallest. A
stream may run WINDOW chunks ahead of what the server's consumer took (CREDIT gives more), so a
client that stops reading pauses only its own request, as in-process. Errors cross as class and
message (`pack`/`unpack`): the protocols map the class onto their status codes, and classes whose
__init__ takes other arguments than the message (ContextOverflow) would not unpickle as themselves.
"""

from __future__ import annotations

import importlib
from typing import Any

OPEN, CALL, GEN, CANCEL, CREDIT, CLOSE, STOP = "open", "call", "gen", "cancel", "credit", "close", "stop"
RET, ERR, CHUNK, BEAT = "ret", "err", "chunk", "beat"

WINDOW = 16  # chunks a stream may send before the server's consumer took any
CREDIT_EVERY = 8  # the server gives credit back in steps of this many chunks taken

# what a client may call on a view (besides generate); anything else is refused
CALLS = frozenset(
    {
        "tokenize",
        "detokenize",
        "chat_tokens",
        "chat_prompt",
        "info",
        "embed",
        "family_info",
        "active",
        "waiting",
        "score",
    }
)

# test-only fault hooks (NANOCOMMANDER_TEST_FAULTS=1 in the runner's environment): a prompt
# containing one of these makes the runner abort (as llama.cpp does on GGML_ASSERT) or hang
ABORT_PROMPT = "<<nanocommander-test:abort>>"
HANG_PROMPT = "<<nanocommander-test:hang>>"
FAULTS_ENV = "NANOCOMMANDER_TEST_FAULTS"


def pack(exc: BaseException) -> tuple[str, str, str, dict[str, Any]]:
    """An exception as (module, class name, message, picklable attributes)."""
    attrs = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, type(None)))}
    return type(exc).__module__, type(exc).__qualname__, str(exc), attrs


def unpack(packed: tuple[str, str, str, dict[str, Any]]) -> BaseException:
    """The exception again, as its own class where it is an Exception we can import."""
    module, name, message, attrs = packed
    try:
        cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError(name)
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        exc.__dict__.update(attrs)
        return exc
    except Exception:  # a class of a module the server lacks: keep its message
        return RuntimeError(f"{name}: {message}")
