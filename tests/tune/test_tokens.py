"""Rendering with the GGUF's own template and tokenizer; loss masks cover assistant turns only."""

from __future__ import annotations

import pytest

from nanocommander.tune.data import Example
from nanocommander.tune.tokens import GGUFTokenizer, encode


@pytest.fixture(scope="module")
def tok(tiny):
    return GGUFTokenizer(tiny["base"])


def learned_text(tok, enc) -> list[str]:
    """The learned tokens as text, one string per contiguous run."""
    runs, current = [], b""
    for token, learned in zip(enc.ids, enc.mask, strict=True):
        if learned:
            current += tok.piece(token)
        elif current:
            runs.append(current.decode())
            current = b""
    return runs + ([current.decode()] if current else [])


def msg(role, content, weight=None):
    return {
        "role": role,
        "content": content,
        "weight": (1 if role == "assistant" else 0) if weight is None else weight,
    }


def test_only_assistant_turns_are_learned_multi_turn(tok):
    messages = [
        msg("system", "be nice"),
        msg("user", "héllo"),
        msg("assistant", "the answer"),
        msg("user", "more"),
        msg("assistant", "in ü"),
    ]
    (enc,) = tok.encode_chat(messages)
    assert tok.llm.detokenize(enc.ids, special=True).decode().startswith("<|endoftext|><|im_start|>system")
    assert learned_text(tok, enc) == ["the answer<|im_end|>\n", "in ü<|im_end|>\n"]
    assert not enc.mask[0]


def test_weight_zero_turn_is_context_only(tok):
    messages = [msg("user", "a"), msg("assistant", "skip me", 0), msg("user", "b"), msg("assistant", "keep")]
    (enc,) = tok.encode_chat(messages)
    assert learned_text(tok, enc) == ["keep<|im_end|>\n"]


def test_template_that_rewrites_history_learns_each_turn_separately(tiny):
    from nanocommander.engine.text.chat_template import ChatTemplate

    # keeps only the last assistant message verbatim, like templates that strip earlier reasoning
    src = (
        "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}<|im_start|>assistant\n...<|im_end|>\n"
        "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = GGUFTokenizer(tiny["base"], template=ChatTemplate(src))
    parts = tok.encode_chat(
        [msg("user", "a"), msg("assistant", "one"), msg("user", "b"), msg("assistant", "two")]
    )
    assert [learned_text(tok, p) for p in parts] == [["one<|im_end|>\n"], ["two<|im_end|>\n"]]


def test_summary_counts_truncation_and_drops(tok):
    long = Example(line=1, messages=(msg("user", "x " * 50), msg("assistant", "y")))
    fine = Example(line=2, messages=(msg("user", "q"), msg("assistant", "the answer")))
    text = Example(line=3, text="the tea")
    encoded, summary = encode(tok, [long, fine, text], max_length=30)
    assert (summary.examples, summary.too_long, summary.dropped) == (2, 1, 1)  # long is cut before its answer
    assert summary.tokens == sum(len(e.ids) for e in encoded)
    assert encoded[1].ids[-1] == tok.eos_id and all(encoded[1].mask[1:])  # raw text: every token learned
    assert "1 longer than 30 tokens" in str(summary)
