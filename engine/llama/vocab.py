"""Vocabulary agreement between members.

Proxy-tuning adds logits id by id, so every member must give each id the same
token text. Converters pad embedding tables with unused `[PAD…]` tokens (Qwen:
151936 vs 152064 rows); such tails are cut to the shared size and pad ids inside
it are masked so they are never sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanocommander.errors import TokenizerMismatch


@dataclass(frozen=True)
class SharedVocab:
    n_vocab: int  # ids [0, n_vocab) are shared by every member
    mask: np.ndarray | None  # boolean, True for pad ids to exclude; None when there are none
    eog: frozenset[int]  # end-of-generation ids of any member


def shared_vocab(models: dict[str, object]) -> SharedVocab:
    """Check that members agree on token texts and return the shared range, pad mask and end tokens.

    `models` maps a role (or file name) to a LoadedModel (or anything with its n_vocab, token_text,
    is_eog and is_pad: tests/fake_member.py). Raises TokenizerMismatch naming the first
    differing id and both texts.
    """
    items = list(models.items())
    ref_name, ref = items[0]
    n_shared = min(m.n_vocab for _, m in items)
    for name, model in items[1:]:
        if model is ref:
            continue
        for tok in range(n_shared):
            a, b = ref.token_text(tok), model.token_text(tok)
            if a != b:
                raise TokenizerMismatch(
                    f"members '{ref_name}' and '{name}' use different tokenizers: token {tok} is {a!r} in "
                    f"'{ref_name}' but {b!r} in '{name}'; all three members must share one vocabulary"
                )
    for name, model in items:
        # Tokens beyond the shared range must be padding, or some member could emit ids others lack.
        for tok in range(n_shared, model.n_vocab):
            if not model.is_pad(tok):
                raise TokenizerMismatch(
                    f"member '{name}' has {model.n_vocab} tokens but others have {n_shared}, and token {tok} "
                    f"({model.token_text(tok)!r}) is not padding"
                )
    mask = np.zeros(n_shared, dtype=bool)
    eog: set[int] = set()
    seen: set[int] = set()
    for _, model in items:
        if id(model) in seen:
            continue
        seen.add(id(model))
        for tok in range(n_shared):
            if model.is_eog(tok):
                eog.add(tok)
            elif model.is_pad(tok):
                mask[tok] = True
    return SharedVocab(n_shared, mask if mask.any() else None, frozenset(eog))
