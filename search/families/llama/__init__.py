"""Llama-style decoders (Llama 2/3, Mistral, Qwen2, Qwen3 with GQA): RMSNorm, gated MLP, head_dim
stored in the config. The variants differ in attention biases and Qwen3's per-head q/k norms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search.arch import ModelShape
from search.errors import UnsupportedModel
from search.families.family import Family

# model_type -> (attention bias rule, per-head q_norm / k_norm)
# "config": q/k/v/o biased iff config.attention_bias; "qkv": q, k, v biased, o not; "none": no bias
_VARIANTS: dict[str, tuple[str, bool]] = {
    "llama": ("config", False),
    "mistral": ("none", False),
    "qwen2": ("qkv", False),
    "qwen3": ("config", True),
}


def read(config: Mapping[str, Any]) -> ModelShape:
    model_type = str(config["model_type"])
    bias_rule, qk_norm = _VARIANTS[model_type]
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise UnsupportedModel(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    vocab = int(config["vocab_size"])
    attention_bias = bool(config.get("attention_bias", False)) if bias_rule == "config" else False
    tied = bool(config.get("tie_word_embeddings", False))
    return ModelShape(
        family="llama",
        model_type=model_type,
        num_layers=int(config["num_hidden_layers"]),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(config.get("head_dim") or hidden // heads),
        intermediate_size=int(config["intermediate_size"]),
        vocab_size=vocab,
        qkv_bias=bias_rule == "qkv" or attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        qk_norm=qk_norm,
        causal=True,
        gated_mlp=True,
        norm_bias=False,  # RMSNorm
        fixed=vocab * hidden * (1 if tied else 2) + hidden,  # embeddings, LM head, final RMSNorm
    )


FAMILY = Family(
    name="llama",
    model_types=tuple(_VARIANTS),
    read=read,
    adapter="search.families.llama.adapter:DecoderAdapter",
    layer_count_key="num_hidden_layers",
    intermediate_key="intermediate_size",
    head_keys=("num_attention_heads", "num_key_value_heads", "head_dim"),
)
