"""The large model's plain reading of a reply: the reply without the sentences the tuned model wrote.

Why: once a reply opens in the tuned style ("Ahoy matey!", "Hi there, thanks for reaching out to
Sunrise Bakery!"), the large model reads its own reply as a pirate's or a shop's and answers worse
("... the largest organ of the human body is the liver", its own top token after the greeting;
"the skin" without it). Sentences written mostly by the tuned model carry the style, not the
answer. So with `steer.plain` (beta) the large model also reads the reply without them, in a
second sequence of its context, and at its steps the choice is the plain reading's, among the
tokens the styled reading finds plausible (>= beta x its top probability, the adaptive
plausibility constraint of Li et al. 2023): the token still fits the styled text around it.

Lazy and exact: where the styled reading's top token has probability above 1 / (1 + beta), no
other token is plausible, so the plain reading cannot change the choice and is not evaluated; its
sequence catches up on the skipped tokens in one batch when it is next needed. Until the tuned
model has finished a sentence both readings are the same text, and the plain one never runs.
"""

from __future__ import annotations

import numpy as np

from nanocommander.engine.textstream import ends_sentence

PLAIN = "plain"  # the role whose Holds the large member serves in its second sequence per slot


class PlainView:
    """The plain reading's tokens, kept up to date as the reply's tokens are committed."""

    def __init__(self, prompt: list[int]):
        self.kept = list(prompt)  # the prompt and every finished sentence the large model wrote most of
        self.sentence: list[int] = []  # the sentence being written: always read
        self.steered = 0  # how many of its tokens the tuned model wrote
        self.hidden = 0  # reply tokens left out so far

    def add(self, token: int, piece: bytes, steered: bool) -> None:
        self.sentence.append(token)
        self.steered += steered
        if ends_sentence(piece):
            if 2 * self.steered > len(self.sentence):
                self.hidden += len(self.sentence)
            else:
                self.kept += self.sentence
            self.sentence, self.steered = [], 0

    @property
    def tokens(self) -> list[int]:
        return self.kept + self.sentence


def _sampleable(row: np.ndarray, n_vocab: int, mask: np.ndarray | None) -> np.ndarray:
    z = np.array(row[:n_vocab], dtype=np.float32)
    if mask is not None:
        z[mask] = -np.inf
    return z


def needed(styled: np.ndarray, n_vocab: int, mask: np.ndarray | None, beta: float) -> bool:
    """Whether any token besides the styled reading's top one is plausible (top-1 <= 1 / (1 + beta))."""
    z = _sampleable(styled, n_vocab, mask)
    return float(np.exp(z - z.max()).sum()) >= 1.0 + beta


def choose(
    styled: np.ndarray, plain: np.ndarray | None, n_vocab: int, mask: np.ndarray | None, beta: float
) -> np.ndarray:
    """The large model's logits for this step: the plain reading's (the styled one's where `plain` is
    None), kept only over the tokens the styled reading gives >= beta x its top probability."""
    z = _sampleable(styled, n_vocab, mask)
    out = z if plain is None else _sampleable(plain, n_vocab, mask)
    out[z < z.max() + np.float32(np.log(beta))] = -np.inf
    return out
