"""A member without llama.cpp: scripted logits over a byte tokenizer, for tests where the model adds nothing.

`FakeMember` serves `Hold`s exactly as `engine.llama.member.Member` does (keeps the common prefix
of what its cache holds, evaluates the rest, returns the logits of the last `n_logits` positions),
but its logits come from a Python function of the tokens so far. Scheduler, strategy and server
tests built on it run in milliseconds and say exactly what each member "wanted". Exactness is
still proven on real llama.cpp models elsewhere; a fake cannot show numerics.

Token ids: 0-255 are the bytes, BOS = 256, EOS = 257 (an end-of-generation id), 258-259 padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nanocommander.engine.llama.member import Hold, MemberStats, common_prefix
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.runtime.composite import Composite
from nanocommander.engine.runtime.core import Core
from nanocommander.engine.runtime.pool import ModelPool

BOS, EOS, N_VOCAB = 256, 257, 260
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
Script = Callable[[Sequence[int]], np.ndarray]  # tokens so far -> next-token logits (N_VOCAB,)


def text_of(ids: Sequence[int]) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def wants(text: str, strength: float = 10.0) -> Script:
    """A script that writes `text` after the prompt (matching on what it has written so far), then EOS."""
    target = list(text.encode("utf-8")) + [EOS]

    def script(tokens: Sequence[int]) -> np.ndarray:
        z = np.zeros(N_VOCAB, dtype=np.float32)
        written = 0
        # the longest tail of tokens that is a prefix of target: what has been written so far
        for k in range(min(len(target), len(tokens)), 0, -1):
            if list(tokens[-k:]) == target[:k]:
                written = k
                break
        z[target[min(written, len(target) - 1)]] = strength
        return z

    return script


class _FakeLlamaModel:
    """The few llama_model calls Core and Composite make (tokenizer, template tokens, facts)."""

    def add_bos_token(self) -> bool:
        return True

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        return ([BOS] if add_bos else []) + list(text)

    def token_bos(self) -> int:
        return BOS

    def token_eos(self) -> int:
        return EOS

    def token_get_text(self, token: int) -> str:
        return {BOS: "<s>", EOS: "</s>"}.get(token, f"[PAD{token}]" if token >= 258 else chr(token))

    def n_ctx_train(self) -> int:
        return 4096

    def n_params(self) -> int:
        return 0

    def size(self) -> int:
        return 0


class FakeModel:
    """Stands for a LoadedModel: a byte vocabulary and a chat template, no weights."""

    vocab = None  # no llama_vocab: requests needing one (grammar, DRY) cannot run on a fake
    n_vocab = N_VOCAB

    def __init__(self, name: str = "fake"):
        self.path = Path(f"/fake/{name}.gguf")
        self.model = _FakeLlamaModel()
        self.metadata = {"tokenizer.chat_template": CHATML, "general.architecture": "fake"}

    def token_text(self, token: int) -> str:
        return self.model.token_get_text(token)

    def piece(self, token: int, special: bool = False) -> bytes:
        if token < 256:
            return bytes([token])
        return self.token_text(token).encode() if special and token in (BOS, EOS) else b""

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def is_pad(self, token: int) -> bool:
        return token >= 258

    def loaded_adapters(self) -> list[Path]:
        return []


class FakeMember:
    """One member context of `n_seq` sequences whose logits come from `script`."""

    def __init__(self, role: str, script: Script, *, n_ctx: int = 2048, n_seq: int = 4, n_batch: int = 512):
        self.role, self.script, self.model = role, script, FakeModel(role)
        self.n_ctx, self.n_seq, self.n_batch = n_ctx, n_seq, n_batch
        self.n_ctx_total = n_ctx * n_seq
        self.cached: list[list[int]] = [[] for _ in range(n_seq)]
        self.stats = MemberStats()
        self.adapter_path: Path | None = None
        self.adapter_scale = 1.0
        self.threads = 1

    @property
    def tokens(self) -> list[int]:
        return self.cached[0]

    def kept(self, seq: int, tokens: Sequence[int], n_logits: int = 1) -> int:
        return common_prefix(self.cached[seq], tokens, len(tokens) - max(1, n_logits))

    def hold(self, requests: Sequence[Hold]) -> list[np.ndarray]:
        out = []
        for h in requests:
            tokens = list(h.tokens)
            keep = self.kept(h.seq, tokens, h.n_logits)
            self.stats.evaluated += len(tokens) - keep
            self.cached[h.seq] = tokens
            rows = [self.script(tokens[: p + 1]) for p in range(len(tokens) - h.n_logits, len(tokens))]
            out.append(np.stack(rows).astype(np.float32))
        self.stats.calls += 1
        return out

    def eval(self, tokens: Sequence[int], seq: int = 0) -> np.ndarray:
        return self.hold([Hold(seq, tokens)])[0][-1]

    def truncate(self, seq: int, n: int) -> None:
        del self.cached[seq][n:]

    def set_adapter(self, adapter: Path | None, scale: float = 1.0) -> None:
        self.adapter_path, self.adapter_scale = adapter, scale
        self.reset()

    def use_threads(self, share: int) -> None:
        pass

    def reset(self, wipe: bool = True) -> None:
        for cached in self.cached:
            cached.clear()

    def close(self) -> None:
        pass


def fake_composite(
    large: Script,
    base: Script | None = None,
    tuned: Script | None = None,
    *,
    recipe: str = "",
    n_seq: int = 4,
) -> Composite:
    """A composite over three fake members (base and tuned default to large's script).

    `recipe` is extra YAML for the recipe (alpha, steer, parameters...); the member paths are
    placeholders, never opened.
    """
    text = (
        "name: fake\nmembers:\n  large: {path: /fake/large.gguf}\n  base: {path: /fake/base.gguf}\n"
        "  tuned: {path: /fake/tuned.gguf}\ntemplate: large\n" + recipe
    )
    members = {
        "large": FakeMember("large", large, n_seq=n_seq),
        "base": FakeMember("base", base or large, n_seq=n_seq),
        "tuned": FakeMember("tuned", tuned or base or large, n_seq=n_seq),
    }
    return Composite(Recipe.parse(text, file="<fake>"), Core(members, ModelPool(), workers=1))  # type: ignore[arg-type]
