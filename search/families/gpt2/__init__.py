"""GPT-2: LayerNorm, a fused q|k|v Conv1D, a two-matrix MLP, head size derived from the hidden size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search.arch import ModelShape
from search.families.family import Family


def read(config: Mapping[str, Any]) -> ModelShape:
    hidden = int(config["n_embd"])
    heads = int(config["n_head"])
    vocab = int(config["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", True))
    return ModelShape(
        family="gpt2",
        model_type=str(config["model_type"]),
        num_layers=int(config["n_layer"]),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=int(config.get("n_inner") or 4 * hidden),
        vocab_size=vocab,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        qk_norm=False,
        causal=True,
        gated_mlp=False,
        norm_bias=True,  # LayerNorm
        # token and position embeddings, final LayerNorm, LM head unless tied
        fixed=vocab * hidden * (1 if tied else 2) + int(config["n_positions"]) * hidden + 2 * hidden,
    )


FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    read=read,
    adapter="search.families.gpt2.adapter:GPT2Adapter",
    layer_count_key="n_layer",
    intermediate_key="n_inner",
    head_keys=None,
)
