"""The one internal request and chunk type shared by every protocol and the engine.

Protocol modules (Ollama, OpenAI, KoboldCpp) translate their wire bodies into a
`GenerateRequest` and a stream of `Chunk`s back into their wire shapes; the engine
knows nothing about any wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from nanocommander.engine.request.decode_options import Speculation, Steer
from nanocommander.engine.request.options import SamplingOptions

Member = Literal["composite", "large", "base", "tuned"]


class DoneReason(str, Enum):
    STOP = "stop"  # an end-of-generation token or a stop string
    LENGTH = "length"  # num_predict reached, or the context is full
    CANCEL = "cancel"  # the caller cancelled (client disconnect, abort)


@dataclass(frozen=True)
class GenerateRequest:
    """One generation: an already-rendered prompt (text or token ids) and how to continue it.

    `prompt` text may contain special tokens written by a chat template; they are parsed
    as special tokens. `alpha=None` uses the recipe's alpha. `member` asks for one
    member's own output instead of the composite (for comparisons and plugins).
    """

    prompt: str | list[int]
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    num_predict: int = -1  # -1: until an end token, a stop string or a full context
    stop: tuple[str, ...] = ()
    alpha: float | None = None
    member: Member = "composite"
    add_bos: bool = True  # ignored when the prompt already starts with BOS
    ignore_eos: bool = False  # keep going past end-of-generation tokens (Kobold's ban_eos_token)
    trim_stop: bool = True  # drop the matched stop string from the output
    steer: Steer | None = None  # None: the recipe's steering mode
    speculative: Speculation | None = None  # None: the recipe's drafting; OFF turns it off
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and the top k
    logprobs_member: Member = "composite"  # read log-probabilities from one member's logits instead
    special_text: tuple[str, ...] = ()  # control tokens whose text is emitted (tool-call markers)
    provenance: bool = False  # each token's TokenProvenance on its chunk (engine/decode/provenance.py)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability (and the most likely alternatives, best first)."""

    token: int
    piece: bytes  # the token's bytes (a piece of a multi-byte character is not valid UTF-8 alone)
    logprob: float
    top: tuple[TokenLogprob, ...] = ()


Source = Literal["large", "steered", "tuned"]


@dataclass(frozen=True)
class TokenProvenance:
    """Who chose a generated token: the large model's own choice, a steered one, or the tuned model's.

    Probabilities are softmax of the raw logits (temperature 1) over the sampleable vocabulary;
    `large_top`/`large_token` are None where the large model did not run at that step (a nudged word).
    """

    token: int
    piece: bytes
    source: Source
    large_top: float | None  # the large model's top-1 probability
    fused_top: float  # the top-1 probability of the distribution the token was sampled from
    large_token: int | None  # the large model's own choice (its argmax)
    large_piece: bytes | None


@dataclass
class Stats:
    """Timings in seconds and token counts, as Ollama's final chunk reports them."""

    load_s: float = 0.0
    prompt_tokens: int = 0
    prompt_eval_tokens: int = 0  # what was actually evaluated after prefix reuse
    prompt_eval_s: float = 0.0
    eval_count: int = 0
    eval_s: float = 0.0
    total_s: float = 0.0
    drafted: int = 0  # tokens proposed by a draft (speculative decoding)
    accepted: int = 0  # drafted tokens the composite accepted
    rounds: int = 0  # draft-and-verify rounds (accepted / rounds: mean accepted length)
    steered: int = 0  # generated tokens at which the small models' delta was applied
    speculative: str | None = None  # the draft source when speculation ran ("tuned", "lookup")
    steer_mode: str | None = None  # the steering mode when it is not plain proxy-tuning

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def steered_fraction(self) -> float:
        return self.steered / self.eval_count if self.eval_count else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.eval_count / self.eval_s if self.eval_s > 0 else 0.0


@dataclass
class Chunk:
    """A piece of generated text, always whole UTF-8; the last chunk has done=True and stats."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    done: bool = False
    done_reason: DoneReason | None = None
    stats: Stats | None = None
    logprobs: list[TokenLogprob] | None = None  # one per token_ids entry, when the request asked
    provenance: list[TokenProvenance] | None = None  # likewise, when the request asked
