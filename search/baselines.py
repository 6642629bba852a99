"""Baseline allocations, enqueued as the first trials so the search starts from what people use."""

from __future__ import annotations

import torch

from search.arch import ModelShape
from search.repair import DEFAULT_TOLERANCE, Proposal


def uniform(shape: ModelShape) -> Proposal:
    """Every layer keeps the same fraction; repair scales it to the budget."""
    return Proposal.uniform(shape.num_layers)


def block_influence_depth(shape: ModelShape, block_influence: torch.Tensor, param_ratio: float) -> Proposal:
    """ShortGPT: drop whole layers in order of lowest Block Influence while the budget allows;
    repair then trims FFN width for the remainder."""
    low = param_ratio * shape.dense_params() * (1 - DEFAULT_TOLERANCE)
    per_layer = shape.attention_params(shape.num_heads) + shape.mlp_params(shape.intermediate_size)
    total = shape.dense_params()
    kept = [1.0] * shape.num_layers
    for layer in torch.argsort(block_influence, stable=True).tolist():
        if total - per_layer < low:
            break
        kept[layer] = 0.0
        total -= per_layer
    return Proposal(tuple(kept), tuple(kept))
