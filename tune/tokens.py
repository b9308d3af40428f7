"""Turn examples into token ids and loss masks with the GGUF's own tokenizer and chat template.

Tokenizing with llama.cpp (vocab-only load) guarantees training sees exactly the
ids inference will see. Assistant spans are found by rendering prefixes: the text
of turn i runs from the render of messages[:i] with a generation prompt to the
render of messages[:i+1]. Token offsets come from the tokens' own byte pieces.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from nanocommander.engine.text.chat_template import ChatTemplate
from nanocommander.errors import InvalidRequest
from nanocommander.tune.data import Example
from nanocommander.tune.errors import DataError


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    mask: list[bool]  # True where the token is learned (predicted from the ones before it)
    line: int
    truncated: bool = False

    @property
    def n_learned(self) -> int:
        return sum(self.mask)


@dataclass(frozen=True)
class Summary:
    examples: int
    tokens: int
    learned_tokens: int
    too_long: int
    dropped: int
    max_length: int

    def __str__(self) -> str:
        return (
            f"{self.examples} examples, {self.tokens} tokens ({self.learned_tokens} learned); "
            f"{self.too_long} longer than {self.max_length} tokens (truncated), "
            f"{self.dropped} dropped for having nothing left to learn"
        )


class GGUFTokenizer:
    """The tokenizer and chat template stored in a GGUF, loaded without weights."""

    def __init__(self, path: str | Path, template: ChatTemplate | None = None):
        self.path = Path(path)
        try:
            self.llm = llama_cpp.Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise DataError(f"cannot read the tokenizer of {self.path}: {exc}") from None
        self.metadata = dict(self.llm.metadata)
        self.vocab = self.llm._model.vocab
        self.add_bos = bool(self.llm._model.add_bos_token())
        self.bos_id, self.eos_id = self.llm.token_bos(), self.llm.token_eos()
        self.template = template or ChatTemplate(
            self.metadata.get("tokenizer.chat_template"),
            bos_token=self._text(self.bos_id),
            eos_token=self._text(self.eos_id),
        )

    def _text(self, token: int) -> str:
        return self.piece(token).decode("utf-8", "replace") if token >= 0 else ""

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)]

    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        add = self.add_bos if add_bos is None else add_bos
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=add, special=True)
        if add and len(ids) > 1 and ids[0] == ids[1] == self.bos_id:  # the template wrote BOS already
            ids = ids[1:]
        return ids

    def render(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        clean = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            return self.template.render(clean, add_generation_prompt=add_generation_prompt)
        except InvalidRequest as exc:
            raise DataError(str(exc)) from None

    def encode_chat(self, messages: list[dict], line: int = 0) -> list[Encoded]:
        """Ids and mask of one conversation; one Encoded per turn if the template rewrites history."""
        full = self.render(messages, add_generation_prompt=False)
        spans, stable = [], True
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or not m["weight"]:
                continue
            before = self.render(messages[:i], add_generation_prompt=True) if i else ""
            after = self.render(messages[: i + 1], add_generation_prompt=False)
            start = _common_prefix(before, after)
            spans.append((start, len(after), after))
            stable = stable and full.startswith(after)
        if stable:
            return [self._encode_spans(full, [(s, e) for s, e, _ in spans], line)]
        # e.g. templates that drop reasoning from earlier turns: learn each turn in its own context
        return [self._encode_spans(text, [(s, e)], line) for s, e, text in spans]

    def encode_text(self, text: str, line: int = 0) -> Encoded:
        ids = self.tokenize(text) + ([self.eos_id] if self.eos_id >= 0 else [])
        return Encoded(ids=ids, mask=[i > 0 for i in range(len(ids))], line=line)

    def _encode_spans(self, text: str, spans: list[tuple[int, int]], line: int) -> Encoded:
        ids = self.tokenize(text)
        starts = self._char_offsets(text, ids)
        mask = [any(s <= pos < e for s, e in spans) for pos in starts]
        return Encoded(ids=ids, mask=mask, line=line)

    def _char_offsets(self, text: str, ids: list[int]) -> list[int]:
        """The character offset where each token starts (tokens added before the text get -1)."""
        data = text.encode("utf-8")
        char_at = _byte_to_char(text)
        offsets, pos = [], 0
        lead = 1 if ids and ids[0] == self.bos_id and not data.startswith(self.piece(self.bos_id)) else 0
        offsets.extend([-1] * lead)
        for token in ids[lead:]:
            piece = self.piece(token)
            if data.startswith(piece, pos):
                offsets.append(char_at[pos])
                pos += len(piece)
            elif (
                pos == 0 and piece.startswith(b" ") and data.startswith(piece[1:])
            ):  # SentencePiece's dummy space
                offsets.append(0)
                pos += len(piece) - 1
            else:
                raise DataError(
                    f"cannot align tokens of {self.path.name} with the rendered text near byte {pos}"
                )
        return offsets


def encode(
    tokenizer: GGUFTokenizer, examples: list[Example], max_length: int
) -> tuple[list[Encoded], Summary]:
    """Encode all examples, truncating at `max_length` and dropping those with nothing left to learn."""
    if max_length < 2:
        raise DataError("--max-length must be at least 2")
    out, tokens, too_long, dropped = [], 0, 0, 0
    for ex in examples:
        parts = (
            [tokenizer.encode_text(ex.text, ex.line)]
            if ex.text is not None
            else tokenizer.encode_chat(list(ex.messages), ex.line)
        )
        for enc in parts:
            if len(enc.ids) > max_length:
                too_long += 1
                enc = Encoded(
                    ids=enc.ids[:max_length], mask=enc.mask[:max_length], line=enc.line, truncated=True
                )
            if not any(enc.mask[1:]):
                dropped += 1
                continue
            tokens += len(enc.ids)
            out.append(enc)
    learned = sum(e.n_learned for e in out)
    return out, Summary(len(out), tokens, learned, too_long, dropped, max_length)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _byte_to_char(text: str) -> list[int]:
    """Map each byte offset of text's UTF-8 encoding (plus the end) to its character offset."""
    out = []
    for ci, ch in enumerate(text):
        out.extend([ci] * len(ch.encode("utf-8")))
    out.append(len(text))
    return out
