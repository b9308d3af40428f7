"""Members must share one vocabulary; padded tails are cut and masked, foreign tokenizers refused."""

from __future__ import annotations

import pytest
from engine_helpers import GREEDY, recipe_over
from tiny_models import N_REAL

from nanocommander.engine.request.types import GenerateRequest
from nanocommander.engine.runtime.composite import Composite
from nanocommander.errors import TokenizerMismatch


def test_padded_vocabulary_is_cut_to_the_shared_size_and_pads_never_sampled(tiny):
    comp = Composite.load(recipe_over(tiny, base="padded"))
    try:
        assert comp.members["base"].model.n_vocab > N_REAL
        assert comp.vocab.n_vocab == N_REAL
        toks = []
        for chunk in comp.generate(GenerateRequest(prompt="hello", sampling=GREEDY, num_predict=30)):
            toks += chunk.token_ids
        assert toks and all(t < N_REAL for t in toks)
    finally:
        comp.close()


def test_padded_member_as_large_works_too(tiny):
    comp = Composite.load(recipe_over(tiny, large="padded"))
    try:
        assert comp.vocab.n_vocab == N_REAL
        assert list(comp.generate(GenerateRequest(prompt="hi", sampling=GREEDY, num_predict=3)))[-1].done
    finally:
        comp.close()


def test_foreign_tokenizer_is_refused_naming_the_first_differing_token(tiny):
    with pytest.raises(TokenizerMismatch) as info:
        Composite.load(recipe_over(tiny, tuned="foreign"))
    message = str(info.value)
    assert "token 256" in message
    assert "'Ġt'" in message and "'he'" in message
    assert "tuned" in message


def test_every_members_end_tokens_end_generation(composite):
    assert {270, 268} <= set(composite.vocab.eog)  # <|im_end|> (EOT) and <|endoftext|> (EOS)
