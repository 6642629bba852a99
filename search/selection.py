"""Which heads and channels a candidate keeps, given how many it keeps (the allocation), and which
weights unstructured sparsity removes.

Structured criteria score the input channels of the output projections (``o_proj`` /
``down_proj`` and their equivalents), computed once per model and calibration set:
- ``magnitude``: Σ_i |W_ij|;
- ``wanda``: Σ_i |W_ij| · ‖X_j‖₂;
- ``flap``: Var(X_j) · Σ_i W_ij² (FLAP's fluctuation; its bias compensation is not applied);
- ``prunenet``: the PruneNet policy's logits, from the weights alone (``search.proxies.prunenet``):
  FFN rows by the first FFN matrix, KV groups by the attention output projection's columns.
Heads are ranked in whole KV groups so every selection exports as a valid GQA model.
Unstructured sparsity removes, in every row of a kept matrix, the weights with the lowest
|W_ij| (``magnitude``) or |W_ij| · ‖X_j‖₂ (``wanda``), among the columns the candidate keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from search.adapters import Adapter, Block, Matrix
from search.arch import ArchConfig, zeros_per_row
from search.stats import ChannelStats, DenseStats

if TYPE_CHECKING:
    from search.proxies.prunenet import SpectralPolicy

CRITERIA = ("magnitude", "wanda", "flap", "prunenet")
SPARSITY_CRITERIA = ("magnitude", "wanda")


@dataclass(frozen=True)
class Importance:
    head_groups: tuple[torch.Tensor, ...]  # per layer: (KV,), higher = more important
    channels: tuple[torch.Tensor, ...]  # per layer: (I,)

    @cached_property
    def ranks(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Each unit's place in its layer's order (0 = most important), ranked once: a trial keeping
        k units keeps those ranked below k, with no sort per trial."""
        return tuple(_ranks(s) for s in self.head_groups), tuple(_ranks(s) for s in self.channels)


@dataclass(frozen=True)
class LayerSelection:
    kv_groups: torch.Tensor  # sorted indices of kept KV groups
    channels: torch.Tensor  # sorted indices of kept FFN channels


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


def compute_importance(
    adapter: Adapter, stats: DenseStats, criterion: str, *, policy: SpectralPolicy | None = None
) -> Importance:
    """``policy``: the trained PruneNet policy for ``prunenet`` (trained here with seed 0 if absent)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown selection criterion {criterion!r}; available: {', '.join(CRITERIA)}")
    if criterion == "prunenet":
        from search.proxies.prunenet import train_policy

        return (policy if policy is not None else train_policy(adapter)).importance(adapter)
    return _statistics_importance(adapter, stats, criterion)


@torch.no_grad()
def _statistics_importance(adapter: Adapter, stats: DenseStats, criterion: str) -> Importance:
    shape = adapter.shape
    attention_name, mlp_name = adapter.output_names
    groups, channels = [], []
    for i in range(shape.num_layers):
        head_scores = _channel_scores(
            adapter.weight(adapter.attention_output(i)), stats.attention_output(i, attention_name), criterion
        )  # (H*D,)
        groups.append(head_scores.view(shape.num_kv_heads, -1).sum(1))  # group k = g heads × D dims
        channels.append(
            _channel_scores(adapter.weight(adapter.mlp_output(i)), stats.mlp_output(i, mlp_name), criterion)
        )
    return Importance(tuple(groups), tuple(channels))


def _channel_scores(weight: torch.Tensor, inputs: ChannelStats, criterion: str) -> torch.Tensor:
    w = weight.detach().float()  # (hidden, C), on the model's device: no copy of the weights to the host
    if criterion == "magnitude":
        scores = w.abs().sum(0)
    elif criterion == "wanda":
        scores = (w.abs() * inputs.norm.to(w.device)).sum(0)
    else:  # flap
        scores = inputs.var.to(w.device) * w.pow(2).sum(0)
    return scores.cpu()


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


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    # stable sort: ties go to the lower index, so selection is deterministic
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))


def _top(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted indices of the k most important units."""
    if k >= ranks.numel():
        return torch.arange(ranks.numel())
    return torch.nonzero(ranks < k).flatten()
