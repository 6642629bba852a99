"""Low-rank adapters (LoRA, Hu et al. 2021) on a model's block matrices, merged back into the weights.

A parametrization (``torch.nn.utils.parametrize``) replaces each matrix ``W`` by ``W + B·A·(α/r)``
with ``W`` frozen, ``A`` (r, in) random and ``B`` (out, r) zero, so training starts at the model
itself. Merging removes the parametrization and leaves the sum in ``weight``: the parameter names
are the model's own again, so the merged model exports like any other and carries no adapter.

Why not ``peft``: it installs cleanly, but it renames every wrapped parameter
(``base_model.model.…``), needs GPT-2's ``Conv1D`` flagged by hand (``fan_in_fan_out``) and brings
``accelerate`` into the worker image, for the ~40 lines below.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

ALPHA_OVER_RANK = 2.0  # the usual α = 2r: the update's scale does not change with the rank


class _LowRankDelta(nn.Module):
    """``weight ↦ weight + B @ A · scale``, in the weight's own orientation (Linear (out, in), Conv1D (in, out))."""

    def __init__(self, weight: torch.Tensor, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        rows, cols = weight.shape
        bound = 1.0 / math.sqrt(cols)  # Kaiming-uniform's bound for A, as the paper's reference code
        a = (torch.rand(rank, cols, generator=generator) * 2 - 1) * bound
        self.a = nn.Parameter(a.to(device=weight.device, dtype=torch.float32))  # (r, cols)
        self.b = nn.Parameter(torch.zeros(rows, rank, device=weight.device, dtype=torch.float32))  # (rows, r)
        self.scale = ALPHA_OVER_RANK

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.b @ self.a * self.scale).to(weight.dtype)


def add_lora(blocks: nn.Module, rank: int, *, seed: int = 0) -> list[nn.Parameter]:
    """Freeze every parameter under ``blocks`` and add rank-``rank`` adapters to its matrices (Linear
    and Conv1D weights); returns the adapters' parameters, the only ones left to train."""
    from transformers.pytorch_utils import Conv1D

    generator = torch.Generator().manual_seed(seed)
    for parameter in blocks.parameters():
        parameter.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    targets = [m for m in blocks.modules() if isinstance(m, (nn.Linear, Conv1D)) and m.weight.ndim == 2]
    for module in targets:
        delta = _LowRankDelta(module.weight, min(rank, *module.weight.shape), generator)
        parametrize.register_parametrization(module, "weight", delta)
        trainable.extend([delta.a, delta.b])
    return trainable


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its weight and remove it; returns how many matrices were merged."""
    merged = 0
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            module.weight.requires_grad_(True)
            merged += 1
    return merged
