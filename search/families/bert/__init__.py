"""BERT-style encoders (MiniLM): post-norm blocks, LayerNorm, a pooler; searched as sentence encoders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search.arch import ModelShape
from search.families.family import Family


def read(config: Mapping[str, Any]) -> ModelShape:
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    vocab = int(config["vocab_size"])
    embeddings = (vocab + int(config["max_position_embeddings"]) + int(config.get("type_vocab_size", 2))) * hidden
    return ModelShape(
        family="bert",
        model_type=str(config["model_type"]),
        num_layers=int(config["num_hidden_layers"]),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=int(config["intermediate_size"]),
        vocab_size=vocab,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        qk_norm=False,
        causal=False,
        gated_mlp=False,
        norm_bias=True,  # LayerNorm
        fixed=embeddings + 2 * hidden + hidden * hidden + hidden,  # embeddings, their LayerNorm, pooler
    )


FAMILY = Family(
    name="bert",
    model_types=("bert",),
    read=read,
    adapter="search.families.bert.adapter:EncoderAdapter",
    layer_count_key="num_hidden_layers",
    intermediate_key="intermediate_size",
    head_keys=None,
)
