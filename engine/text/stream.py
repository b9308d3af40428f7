"""Bytes of token pieces in, whole UTF-8 text out, with stop strings matched on text.

A character split across tokens is held back until complete; text that could be
the start of a stop string is held back until it can't (stops may span tokens).
"""

from __future__ import annotations

import codecs

SENTENCE_END = (b".", b"!", b"?", b"\n")


def ends_sentence(piece: bytes) -> bool | None:
    """Whether a token's text ends a sentence or line; None for blank text (it changes nothing)."""
    tail = piece.rstrip(b" \t")
    return tail.endswith(SENTENCE_END) if tail else None


class TextStream:
    def __init__(self, stops: tuple[str, ...] = (), *, trim_stop: bool = True):
        self.stops = tuple(s for s in stops if s)
        self.trim_stop = trim_stop
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self.stopped: str | None = None
        self.text = ""  # everything emitted so far

    def push(self, data: bytes) -> tuple[str, bool]:
        """Feed one token's bytes; returns (text safe to emit now, whether a stop string matched)."""
        self._pending += self._decoder.decode(data)
        return self._release(final=False)

    def flush(self) -> str:
        """Release held text at the end; an incomplete trailing character (cut by num_predict) is dropped."""
        self._decoder.reset()
        return self._release(final=True)[0]

    def _release(self, final: bool) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        hits = [(self._pending.find(s), s) for s in self.stops]
        hits = [(i, s) for i, s in hits if i >= 0]
        if hits:
            index, stop = min(hits)
            self.stopped = stop
            out = self._pending[: index if self.trim_stop else index + len(stop)]
            self._pending = ""
            return self._emit(out), True
        hold = 0 if final else self._held_back()
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return self._emit(out), False

    def _held_back(self) -> int:
        """Length of the longest suffix of pending text that begins some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:k]):
                    best = k
                    break
        return best

    def _emit(self, text: str) -> str:
        self.text += text
        return text
