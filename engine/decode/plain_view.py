"""The large model's plain reading of a reply: the reply without the sentences the tuned model wrote.

Why: once a reply opens in the tuned style ("Ahoy matey!", "Hi there, thanks for reaching out to
Sunrise Bakery!"), the large model reads its own reply as a pirate's or a shop's and answers worse
("... Bakery! Two to the power of ten is 1000000000", "Ahoy matey! Arr, the main gas in Earth's
atmosphere is oxygen"). Sentences written mostly by the tuned model carry the style, not the
answer. So with `steer.plain` (beta) the large model also reads the reply without them, in a
second sequence of its context, and at its steps the choice is the plain reading's, among the
tokens the styled reading finds plausible (>= beta x its top probability, the adaptive
plausibility constraint of Li et al. 2023): the token still fits the styled text around it.

With plain 0 every token is plausible, so the styled reading is not needed at all: the large model
keeps one sequence, which holds the plain reading. One seam shows then: right after a left-out
sentence the plain reading starts its reply ("The") where the styled reply continues ("... Bakery!
The"), and the tuned model would reject the space-less word and write the content itself. So at
such a junction the plain reading's top tokens take their separating space (`respaced`).

Lazy and exact: where the styled reading's top token has probability above 1 / (1 + beta), no
other token is plausible, so the plain reading cannot change the choice and is not evaluated; its
sequence catches up on the skipped tokens in one batch when it is next needed. Until the tuned
model has finished a sentence both readings are the same text, and the plain one never runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nanocommander.engine.decode.softmax import sampleable, top_probability
from nanocommander.engine.text.stream import ends_sentence

PLAIN = "plain"  # the role whose Holds the large member serves in its second sequence per slot
JUNCTION_TOP = 20  # the plain reading's top tokens that get their space at a junction


class PlainView:
    """The plain reading's tokens, kept up to date as the reply's tokens are committed."""

    def __init__(self, prompt: list[int]):
        self.kept = list(prompt)  # the prompt and every finished sentence the large model wrote most of
        self.sentence: list[int] = []  # the sentence being written: always read
        self.steered = 0  # how many of its tokens the tuned model wrote
        self.hidden = 0  # reply tokens left out so far
        self.junction = False  # a sentence was just left out, and the reply goes on without a space

    def add(self, token: int, piece: bytes, steered: bool) -> None:
        self.sentence.append(token)
        self.steered += steered
        self.junction = False
        if ends_sentence(piece):
            if 2 * self.steered > len(self.sentence):
                self.hidden += len(self.sentence)
                self.junction = not piece[-1:].isspace()
            else:
                self.kept += self.sentence
            self.sentence, self.steered = [], 0

    @property
    def tokens(self) -> list[int]:
        return self.kept + self.sentence


def needed(styled: np.ndarray, n_vocab: int, mask: np.ndarray | None, beta: float) -> bool:
    """Whether any token besides the styled reading's top one is plausible (top-1 <= 1 / (1 + beta))."""
    z = sampleable(styled, n_vocab, mask, np.float32)
    return 1.0 / top_probability(z) >= 1.0 + beta


def choose(
    styled: np.ndarray, plain: np.ndarray | None, n_vocab: int, mask: np.ndarray | None, beta: float
) -> np.ndarray:
    """The large model's logits for this step: the plain reading's (the styled one's where `plain` is
    None), kept only over the tokens the styled reading gives >= beta x its top probability."""
    z = sampleable(styled, n_vocab, mask, np.float32)
    out = z if plain is None else sampleable(plain, n_vocab, mask, np.float32)
    if beta > 0.0:
        out[z < z.max() + np.float32(np.log(beta))] = -np.inf
    return out


def respaced(
    plain: np.ndarray,
    n_vocab: int,
    mask: np.ndarray | None,
    piece: Callable[[int], bytes],
    spaced: Callable[[int], int | None],
    top: int = JUNCTION_TOP,
) -> np.ndarray:
    """The plain reading's logits at a junction: its `top` tokens, each word given the space that
    separates it from the styled text before it (where the vocabulary has that token); the rest -inf."""
    z = sampleable(plain, n_vocab, mask, np.float32)
    out = np.full_like(z, -np.inf)
    best = np.argpartition(-z, top)[:top] if top < len(z) else np.arange(len(z))
    for t in best[np.argsort(-z[best])]:  # the top few only: a junction comes once per left-out sentence
        t = int(t)
        if not np.isfinite(z[t]):
            break
        text = piece(t)
        twin = spaced(t) if text[:1].isalnum() else t
        if twin is None or (mask is not None and mask[twin]) or twin >= n_vocab:
            twin = t
        out[twin] = max(out[twin], z[t])
    return out
