"""The reproducible mode: a position's logits depend on its tokens only, not on how it was batched.

llama.cpp's CPU kernels compute a row of a matrix product differently depending on how many rows
the product has: llamafile's tinyBLAS runs only for two rows or more (one row takes ggml's vector
dot), the repacked K-quant/Q4_0 layouts multiply rows in groups of four and the leftovers one by
one, and flash attention tiles its queries above a batch size and splits the KV cache across threads
for one query over 512 cells. So the same position gets other logits when its prompt was read whole
(warm cache or not), beside other sequences, or as a drafted token (bench/reproducibility.py: up to
0.6 on Qwen2.5-Coder Q4_K_M). One ubatch of one token, attention without flash attention and one sequence
per llama_decode (llama.cpp puts a token of each sequence into one ubatch) make every product one row
and every attention one query, computed by the same kernels whatever else is
in the llama_decode call and whatever the thread count: then prefix reuse, batching, speculation
and adapter families give bit-identical logits, at the price of reading prompts one token a pass.
"""

from __future__ import annotations

import functools

import llama_cpp

from nanocommander.engine.request.options import DETERMINISTIC_ENV as ENV

# Measured by bench/reproducibility.py on this project's 2-core x86 CPU (AVX-512), no GPU:
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M and 0.5B Q4_K_M, an 81-token prompt.
COST = (
    "prompt reading 0.30x (0.5B) to 0.46x (1.5B) the speed, every token its own pass; one stream decodes at "
    "0.86-0.93x; streams of one batch decode one after another (no batching gain)"
)


def context_params(params: llama_cpp.llama_context_params) -> None:
    """Set a context's parameters for the mode: one token per ubatch, flash attention off."""
    params.n_ubatch = 1
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED


@functools.cache
def library_paths() -> dict[str, bool]:
    """Which batch-dependent CPU paths this llama.cpp build has (they are why the mode is needed)."""
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    return {name: f"{name} = 1" in info for name in ("LLAMAFILE", "REPACK")}


def describe(on: bool) -> dict[str, object]:
    """For show and ps: whether the mode is on, what it does and what it costs."""
    out: dict[str, object] = {"enabled": on}
    if on:
        out["how"] = "one token per llama.cpp ubatch, flash attention off, one sequence per llama_decode"
        out["cost"] = COST
    else:
        out["note"] = (
            "greedy text may change with the KV cache state, the batch, speculation or the family "
            f"(set parameters deterministic: true or {ENV}=1)"
        )
    out["library"] = library_paths()
    return out
