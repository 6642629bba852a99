"""Which heads and channels a candidate keeps, given how many it keeps (the allocation) and a
criterion's importance (``search.criteria``), and which weights unstructured sparsity removes.

Heads are kept in whole KV groups, the most important first, so every selection exports as a valid
GQA model. Unstructured sparsity removes, in every row of a kept matrix, the weights with the
lowest |W_ij| (``magnitude``) or |W_ij| · ‖X_j‖₂ (``wanda``), among the columns the candidate keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from search.adapters import Block, Matrix
from search.arch import ArchConfig, zeros_per_row
from search.stats import DenseStats
from search.units import Importance, LayerSelection


@dataclass(frozen=True)
class SparsityScorer:
    """Scores the weights of a matrix for unstructured sparsity (lower = removed first)."""

    criterion: str
    stats: DenseStats | None

    def scores(self, block: Block, matrix: Matrix, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        weight = matrix.weight().detach()[rows][:, cols].abs().float()  # (R, C)
        if self.criterion == "wanda" and self.stats is not None:
            norms = self.stats.inputs[(block.layer, block.kind, matrix.name)].norm.to(weight.device)
            weight = weight * norms[cols]
        return weight


@dataclass(frozen=True)
class Selection:
    arch: ArchConfig
    layers: tuple[LayerSelection, ...]
    sparsity: SparsityScorer | None = None

    def to_dict(self) -> dict[str, list[dict[str, list[int]]]]:
        return {
            "layers": [
                {"kv_groups": layer.kv_groups.tolist(), "channels": layer.channels.tolist()} for layer in self.layers
            ]
        }


def select_units(
    importance: Importance, arch: ArchConfig, group_size: int, sparsity: SparsityScorer | None = None
) -> Selection:
    layers = []
    group_ranks, channel_ranks = importance.ranks
    for layer, groups, channels in zip(arch.layers, group_ranks, channel_ranks, strict=True):
        layers.append(
            LayerSelection(
                kv_groups=_top(groups, layer.heads // group_size),
                channels=_top(channels, layer.ffn_channels),
            )
        )
    return Selection(arch, tuple(layers), sparsity if arch.sparse else None)


def sparse_positions(
    scorer: SparsityScorer, block: Block, matrix: Matrix, sparsity: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) indices, in (out, in) orientation, of the weights a sparsity ratio removes."""
    weight = matrix.weight()
    rows = matrix.rows if matrix.rows is not None else torch.arange(weight.shape[0])
    cols = matrix.cols if matrix.cols is not None else torch.arange(weight.shape[1])
    k = zeros_per_row(len(cols), sparsity)
    scores = scorer.scores(block, matrix, rows.to(weight.device), cols.to(weight.device))  # (R, C)
    lowest = scores.topk(k, dim=1, largest=False).indices  # (R, k); stable for ties in practice
    cols = cols.to(weight.device)
    return rows.to(weight.device).unsqueeze(1).expand_as(lowest), cols[lowest]


def _top(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted indices of the k most important units."""
    if k >= ranks.numel():
        return torch.arange(ranks.numel())
    return torch.nonzero(ranks < k).flatten()
