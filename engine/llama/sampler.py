"""Sampling over fused logits with llama.cpp's own sampler chain.

The composite's logits exist only in numpy, so instead of `llama_sampler_sample`
(which reads a context's logits) we fill a `llama_token_data_array` from the
fused vector and run two chains over it:

* `history`: logit bias, repetition/presence/frequency penalties and DRY. It also
  sees the prompt, so penalties cover the recent prompt tokens as llama.cpp's
  server does.
* `choice`: grammar, then either temperature (for mirostat) or top-k, typical, top-p,
  min-p, XTC and (dynamic) temperature: everything that shapes the distribution;
* `pick`: the final choice: greedy at temperature 0, mirostat 1/2, or the seeded distribution.

Keeping `pick` apart lets `probs` return the distribution the chain would sample from
without sampling it (speculative decoding compares two such distributions).
"""

from __future__ import annotations

import ctypes
import random

import llama_cpp
import numpy as np
from llama_cpp import _internals

from nanocommander.engine.request.options import SamplingOptions
from nanocommander.errors import InvalidRequest

DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp: pick a random seed


class Sampler:
    def __init__(self, opts: SamplingOptions, vocab, n_vocab: int, n_ctx: int = 4096):
        self.opts, self.n_vocab = opts, n_vocab
        # -1 means "the whole context" (Ollama's and KoboldCpp's habit); llama.cpp's samplers need the number
        self.repeat_last_n = n_ctx if opts.repeat_last_n < 0 else opts.repeat_last_n
        self.dry_last_n = n_ctx if opts.dry_penalty_last_n < 0 else opts.dry_penalty_last_n
        self._data = _internals.LlamaTokenDataArray(n_vocab=n_vocab)
        # XTC advances the array's `data` pointer; sample() puts it back to the buffer's start
        self._start = self._data.candidates_data.ctypes.data_as(llama_cpp.llama_token_data_p)
        seed = opts.seed if opts.seed is not None and opts.seed >= 0 else random.getrandbits(32)
        self.seed = seed & 0xFFFFFFFF
        self.history = self._chain()
        self.choice = self._chain()
        self.pick = self._chain()
        self._build_history(vocab)
        self._build_choice(vocab)

    @staticmethod
    def _chain():
        return llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def _add(self, chain, sampler) -> None:
        if not sampler:
            raise InvalidRequest("llama.cpp refused a sampler setting")
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    def _build_history(self, vocab) -> None:
        o = self.opts
        bias = {t: b for t, b in o.logit_bias.items() if 0 <= t < self.n_vocab}
        if bias:
            arr = (llama_cpp.llama_logit_bias * len(bias))()
            for i, (tok, b) in enumerate(bias.items()):
                arr[i].token, arr[i].bias = tok, (-np.inf if b == -np.inf else b)
            self._add(self.history, llama_cpp.llama_sampler_init_logit_bias(self.n_vocab, len(bias), arr))
        last_n = self.repeat_last_n
        if o.repeat_penalty != 1.0 or o.presence_penalty or o.frequency_penalty:
            self._add(
                self.history,
                llama_cpp.llama_sampler_init_penalties(
                    self.n_vocab, last_n, o.repeat_penalty, o.frequency_penalty, o.presence_penalty
                ),
            )
        if o.dry_multiplier > 0:
            breakers = (ctypes.c_char_p * len(o.dry_sequence_breakers))(
                *[s.encode() for s in o.dry_sequence_breakers]
            )
            self._add(
                self.history,
                llama_cpp.llama_sampler_init_dry(
                    vocab,
                    o.dry_multiplier,
                    o.dry_base,
                    o.dry_allowed_length,
                    self.dry_last_n,
                    breakers,
                    len(o.dry_sequence_breakers),
                ),
            )

    def _build_choice(self, vocab) -> None:
        o = self.opts
        if o.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(vocab, o.grammar.encode(), b"root")
            if not grammar:
                raise InvalidRequest("invalid grammar (GBNF could not be parsed)")
            self._add(self.choice, grammar)
        if o.temperature <= 0:
            self._add(self.pick, llama_cpp.llama_sampler_init_greedy())
            return
        if o.mirostat == 1:
            self._add(self.choice, llama_cpp.llama_sampler_init_temp(o.temperature))
            self._add(
                self.pick,
                llama_cpp.llama_sampler_init_mirostat(
                    self.n_vocab, self.seed, o.mirostat_tau, o.mirostat_eta, 100
                ),
            )
            return
        if o.mirostat == 2:
            self._add(self.choice, llama_cpp.llama_sampler_init_temp(o.temperature))
            self._add(
                self.pick,
                llama_cpp.llama_sampler_init_mirostat_v2(self.seed, o.mirostat_tau, o.mirostat_eta),
            )
            return
        if o.top_k > 0:
            self._add(self.choice, llama_cpp.llama_sampler_init_top_k(o.top_k))
        if o.typical_p < 1.0:
            self._add(self.choice, llama_cpp.llama_sampler_init_typical(o.typical_p, 1))
        if o.top_p < 1.0:
            self._add(self.choice, llama_cpp.llama_sampler_init_top_p(o.top_p, 1))
        if o.min_p > 0:
            self._add(self.choice, llama_cpp.llama_sampler_init_min_p(o.min_p, 1))
        if o.xtc_probability > 0:
            self._add(
                self.choice,
                llama_cpp.llama_sampler_init_xtc(o.xtc_probability, o.xtc_threshold, 1, self.seed),
            )
        if o.dynatemp_range > 0:
            self._add(
                self.choice,
                llama_cpp.llama_sampler_init_temp_ext(o.temperature, o.dynatemp_range, o.dynatemp_exponent),
            )
        else:
            self._add(self.choice, llama_cpp.llama_sampler_init_temp(o.temperature))
        self._add(self.pick, llama_cpp.llama_sampler_init_dist(self.seed))

    @property
    def greedy(self) -> bool:
        return self.opts.temperature <= 0

    @property
    def exact(self) -> bool:
        """Whether `probs` is the distribution `sample` draws from (mirostat and XTC draw their own)."""
        return self.greedy or (self.opts.mirostat == 0 and self.opts.xtc_probability <= 0)

    def accept_prompt(self, tokens: list[int]) -> None:
        """Let the penalty samplers see the recent prompt (not the grammar: it constrains output only)."""
        window = max(self.repeat_last_n, self.dry_last_n, 0)
        for tok in tokens[-window:] if window else ():
            llama_cpp.llama_sampler_accept(self.history, tok)

    def _shape(self, logits: np.ndarray):
        self._data.copy_logits(logits)
        self._data.candidates.data = self._start  # else the next step writes past the buffer (a crash)
        cur = ctypes.byref(self._data.candidates)
        llama_cpp.llama_sampler_apply(self.history, cur)
        llama_cpp.llama_sampler_apply(self.choice, cur)
        return cur

    def sample(self, logits: np.ndarray) -> int:
        """Choose the next token from a logits vector of length n_vocab."""
        cur = self._shape(logits)
        llama_cpp.llama_sampler_apply(self.pick, cur)
        sel = self._data.candidates.selected
        if sel < 0:
            raise InvalidRequest("no token satisfies the grammar and sampler settings")
        return int(self._data.candidates.data[sel].id)

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The probabilities `sample` would draw from, as a length-n_vocab vector (nothing is drawn).

        Runs the history and shaping chains with their current state (penalties, grammar) and
        softmaxes what survives; ids cut by top-k/top-p/min-p or the grammar get 0.
        """
        self._shape(logits)
        cand = self._data.candidates
        if ctypes.addressof(cand.data.contents) != self._data.candidates_data.ctypes.data:
            raise RuntimeError("a sampler reallocated the candidate array")  # never seen; guard anyway
        kept = self._data.candidates_data[: cand.size]
        z = kept.logit.astype(np.float64)
        top = z.max() if z.size else -np.inf
        if not np.isfinite(top):
            raise InvalidRequest("no token satisfies the grammar and sampler settings")
        w = np.exp(z - top)
        out = np.zeros(self.n_vocab, dtype=np.float64)
        out[kept.id] = w / w.sum()
        return out

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.history, token)
        llama_cpp.llama_sampler_accept(self.choice, token)
        llama_cpp.llama_sampler_accept(self.pick, token)

    def close(self) -> None:
        for name in ("history", "choice", "pick"):
            chain = getattr(self, name, None)
            if chain:
                llama_cpp.llama_sampler_free(chain)
                setattr(self, name, None)

    def __del__(self) -> None:
        self.close()
