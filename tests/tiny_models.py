"""Tiny llama-architecture GGUF models with a real byte-level BPE tokenizer.

Random weights, but everything llama.cpp needs to load them for real: a `gpt2`
tokenizer (pre `default`) over the 256 GPT-2 byte symbols plus a few merges and
ChatML special tokens, BOS/EOS/EOT ids and a Jinja chat template. Multi-byte
characters span several tokens, which the UTF-8 tests rely on. Also writes LoRA
adapter GGUFs in llama.cpp's format (general.type=adapter, adapter.type=lora).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("Ġ", "a"),
    ("l", "l"),
    ("o", "u"),
    ("Ġ", "s"),
    ("r", "e"),
    ("o", "n"),
]


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def vocabulary(
    *, foreign: bool = False, pad_to: int | None = None, extra_specials: tuple[str, ...] = ()
) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges. `foreign` swaps two merges so ids disagree from 256 on;
    `extra_specials` are more control tokens after ChatML's (e.g. a tool-call marker)."""
    merges = list(MERGES)
    if foreign:
        merges[0], merges[1] = merges[1], merges[0]
    specials = SPECIALS + list(extra_specials)
    tokens = byte_symbols() + ["".join(m) for m in merges] + specials
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(specials)) + [gguf.TokenType.CONTROL] * len(specials)
    if pad_to:
        extra = pad_to - len(tokens)
        tokens += [f"[PAD{i}]" for i in range(extra)]
        types += [gguf.TokenType.UNUSED] * extra
    return tokens, [int(t) for t in types], [" ".join(m) for m in merges]


N_REAL = 256 + len(MERGES) + len(SPECIALS)  # real vocabulary size
BOS = EOS = 256 + len(MERGES)  # <|endoftext|>
IM_START, IM_END = BOS + 1, BOS + 2


@dataclass(frozen=True)
class Shape:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx: int = 2048


LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def linear_shapes(shape: Shape) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of each per-block linear layer."""
    head_dim = shape.n_embd // shape.n_head
    kv = head_dim * shape.n_head_kv
    return {
        "attn_q": (shape.n_embd, shape.n_embd),
        "attn_k": (kv, shape.n_embd),
        "attn_v": (kv, shape.n_embd),
        "attn_output": (shape.n_embd, shape.n_embd),
        "ffn_gate": (shape.n_ff, shape.n_embd),
        "ffn_up": (shape.n_ff, shape.n_embd),
        "ffn_down": (shape.n_embd, shape.n_ff),
    }


def write_model(
    path: Path,
    *,
    seed: int,
    shape: Shape = Shape(),
    foreign: bool = False,
    pad_to: int | None = None,
    name: str = "tiny",
    chat_template: str = CHATML_TEMPLATE,
    add_bos: bool = True,
    extra_specials: tuple[str, ...] = (),
    pooling: int | None = None,
    sharpness: float = 1.0,
) -> Path:
    """Write a llama GGUF with random F32 weights; the same seed and shape give the same file.
    `pooling` declares an embedding pooling type (llama.pooling_type: 1 mean, 2 cls, 3 last);
    `sharpness` scales the output layer (above 1: a model surer of its next tokens)."""
    rng = np.random.default_rng(seed)
    tokens, types, merges = vocabulary(foreign=foreign, pad_to=pad_to, extra_specials=extra_specials)
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(shape.n_ctx)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(shape.n_embd // shape.n_head)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_eot_token_id(IM_END)
    w.add_add_bos_token(add_bos)
    w.add_chat_template(chat_template)
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType(pooling))

    def normal(*dims: int, std: float) -> np.ndarray:
        return (rng.standard_normal(dims) * std).astype(np.float32)

    w.add_tensor("token_embd.weight", normal(n_vocab, shape.n_embd, std=1.0))
    for i in range(shape.n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(shape.n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(shape.n_embd, np.float32))
        for layer, (out_f, in_f) in linear_shapes(shape).items():
            w.add_tensor(f"blk.{i}.{layer}.weight", normal(out_f, in_f, std=in_f**-0.5))
    w.add_tensor("output_norm.weight", np.ones(shape.n_embd, np.float32))
    w.add_tensor("output.weight", normal(n_vocab, shape.n_embd, std=2.0 * sharpness * shape.n_embd**-0.5))
    _finish(w)
    return path


def write_lora(
    path: Path,
    *,
    seed: int,
    shape: Shape = Shape(),
    rank: int = 4,
    alpha: float = 8.0,
    layers: tuple[str, ...] = ("attn_q", "attn_v", "ffn_up", "ffn_down"),
    std: float = 0.5,
    q8_a: bool = False,
    arch: str = "llama",
) -> Path:
    """Write a llama.cpp LoRA adapter GGUF for a model of `shape` (lora_a: r×in, lora_b: out×r).

    `q8_a` stores lora_a as Q8_0 (same random draws): llama.cpp's CPU kernels for it do not depend
    on the batch, while F32 ones do (see bench/batch_numerics.py)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for i in range(shape.n_layer):
        for layer in layers:
            out_f, in_f = linear_shapes(shape)[layer]
            a = (rng.standard_normal((rank, in_f)) * std * in_f**-0.5).astype(np.float32)
            b = (rng.standard_normal((out_f, rank)) * std).astype(np.float32)
            if q8_a:
                q8 = gguf.GGMLQuantizationType.Q8_0
                w.add_tensor(f"blk.{i}.{layer}.weight.lora_a", gguf.quants.quantize(a, q8), raw_dtype=q8)
            else:
                w.add_tensor(f"blk.{i}.{layer}.weight.lora_a", a)
            w.add_tensor(f"blk.{i}.{layer}.weight.lora_b", b)
    _finish(w)
    return path


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# Wide enough (a multiple of 256) for llama.cpp's K-quants: Q4_K/Q6_K blocks span 256 weights.
KQUANT = Shape(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512)
FTYPE_Q4_K_M = 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M: Q4_K with Q6_K for some tensors, as the real downloads


def write_kquant(path: Path, *, seed: int, shape: Shape = KQUANT, ftype: int = FTYPE_Q4_K_M) -> Path:
    """A tiny model quantized by llama.cpp's own quantizer (gguf-py cannot write K-quants): real
    Q4_K/Q6_K tensors, so the batch-dependent CPU kernels of the models users run are exercised."""
    import ctypes

    import llama_cpp

    src = write_model(path.with_suffix(".f32.gguf"), seed=seed, shape=shape)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    if llama_cpp.llama_model_quantize(str(src).encode(), str(path).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} (ftype {ftype})")
    src.unlink()
    return path


LARGE = Shape(n_embd=128, n_layer=3, n_head=4, n_head_kv=2, n_ff=256)
SMALL = Shape()


def write_set(folder: Path) -> dict[str, Path]:
    """The standard fixture set: large, base, tuned, padded base, foreign base and a LoRA for base."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "large": write_model(folder / "large.gguf", seed=1, shape=LARGE, name="tiny-large"),
        "base": write_model(folder / "base.gguf", seed=2, name="tiny-base"),
        "tuned": write_model(folder / "tuned.gguf", seed=3, name="tiny-tuned"),
        "padded": write_model(folder / "padded.gguf", seed=4, pad_to=N_REAL + 13, name="tiny-padded"),
        "foreign": write_model(folder / "foreign.gguf", seed=5, foreign=True, name="tiny-foreign"),
        "lora": write_lora(folder / "lora.gguf", seed=6),
    }
