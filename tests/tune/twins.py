"""Tiny transformers models and their GGUF twins, written from the same weights.

The twin is what a user would have: a GGUF with the tiny_models tokenizer and
ChatML template. Writing it from a torch model (llama's q/k rows permuted as
convert_hf_to_gguf.py does, qwen2's q/k/v biases kept) gives a reference for
both directions: GGUF -> torch loading and PEFT adapter -> llama.cpp export.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import tiny_models
import torch

from nanocommander.tune.export import permute_rows

N_HEAD, N_HEAD_KV = 4, 2


def make_model(kind: str, seed: int = 0):
    """A random tiny llama or qwen2 causal LM with the tiny_models vocabulary."""
    import transformers

    common = dict(
        vocab_size=tiny_models.N_REAL,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_HEAD_KV,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        initializer_range=0.15,
        bos_token_id=tiny_models.BOS,
        eos_token_id=tiny_models.EOS,
    )
    torch.manual_seed(seed)
    if kind == "llama":
        config = transformers.LlamaConfig(tie_word_embeddings=False, **common)
        model = transformers.LlamaForCausalLM(config)
    elif kind == "qwen2":
        config = transformers.Qwen2Config(tie_word_embeddings=True, **common)
        model = transformers.Qwen2ForCausalLM(config)
        with torch.no_grad():  # default init zeroes biases; make them matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.3)
    elif (
        kind == "gemma3"
    ):  # head_dim 256 = query_pre_attn_scalar, as in Gemma 3 1B-12B (llama.cpp assumes it)
        common.update(num_attention_heads=2, num_key_value_heads=1)
        config = transformers.Gemma3TextConfig(
            head_dim=256, query_pre_attn_scalar=256, sliding_window=512, tie_word_embeddings=True, **common
        )
        model = transformers.Gemma3ForCausalLM(config)
        with torch.no_grad():  # Gemma's norms are (1 + w); random w makes the +1 offset matter
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(0, 0.3)
    else:
        raise ValueError(kind)
    return model.eval()


_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


_GEMMA3_NAMES = {
    **_NAMES,
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
}


def gguf_name(hf: str, gemma: bool = False) -> str | None:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")  # model.layers.N.<module path>.<weight|bias>
    names = _GEMMA3_NAMES if gemma else _NAMES
    return f"blk.{parts[2]}.{names['.'.join(parts[3:-1])]}.{parts[-1]}"


def write_gguf(model, path: Path) -> Path:
    """The GGUF twin of `model`, loadable by llama.cpp and by transformers."""
    cfg = model.config
    arch = cfg.model_type
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if arch == "gemma3_text":
        arch = "gemma3"
        w = gguf.GGUFWriter(str(path), arch)  # restart: the architecture prefixes every key
        w.add_name("tiny-gemma3")
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_sliding_window(cfg.sliding_window)
        w.add_rope_freq_base(float(cfg.rope_parameters["full_attention"]["rope_theta"]))
    else:
        w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens, types, merges = tiny_models.vocabulary()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tiny_models.BOS)
    w.add_eos_token_id(tiny_models.EOS)
    w.add_eot_token_id(tiny_models.IM_END)
    w.add_add_bos_token(arch == "llama")
    w.add_chat_template(tiny_models.CHATML_TEMPLATE)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = tensor.detach().float().numpy().copy()
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            data = permute_rows(data, N_HEAD if ".q_proj." in name else N_HEAD_KV)
        if arch == "gemma3" and "norm" in name:
            data = data + 1.0  # llama.cpp stores Gemma norms with the +1 folded in
        w.add_tensor(gguf_name(name, gemma=arch == "gemma3"), np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
