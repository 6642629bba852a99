"""Which heads and channels a candidate keeps, given how many it keeps (the allocation).

Wanda-style importance, |W| · ‖X‖ on the inputs of ``o_proj`` / ``down_proj``, scored once per
model and calibration set. Heads are ranked in whole KV groups so every selection can be
exported as a standard GQA model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from search.adapters import DecoderAdapter
from search.arch import ArchConfig
from search.stats import DenseStats


@dataclass(frozen=True)
class Importance:
    head_groups: tuple[torch.Tensor, ...]  # per layer: (KV,), higher = more important
    channels: tuple[torch.Tensor, ...]  # per layer: (I,)


@dataclass(frozen=True)
class LayerSelection:
    kv_groups: torch.Tensor  # sorted indices of kept KV groups
    channels: torch.Tensor  # sorted indices of kept FFN channels


@dataclass(frozen=True)
class Selection:
    arch: ArchConfig
    layers: tuple[LayerSelection, ...]

    def to_dict(self) -> dict[str, list[dict[str, list[int]]]]:
        return {
            "layers": [
                {"kv_groups": layer.kv_groups.tolist(), "channels": layer.channels.tolist()} for layer in self.layers
            ]
        }


@torch.no_grad()
def wanda_importance(adapter: DecoderAdapter, stats: DenseStats) -> Importance:
    shape = adapter.shape
    groups, channels = [], []
    for i in range(shape.num_layers):
        w_o = adapter.o_proj(i).weight.detach().float().abs().cpu()  # (hidden, H*D)
        per_input = (w_o * stats.o_proj_input_norms[i]).sum(0)  # (H*D,)
        groups.append(per_input.view(shape.num_kv_heads, -1).sum(1))  # (KV,): group = g heads × D dims
        w_down = adapter.down_proj(i).weight.detach().float().abs().cpu()  # (hidden, I)
        channels.append((w_down * stats.down_proj_input_norms[i]).sum(0))  # (I,)
    return Importance(tuple(groups), tuple(channels))


def select_units(importance: Importance, arch: ArchConfig, group_size: int) -> Selection:
    layers = []
    for layer, groups, channels in zip(arch.layers, importance.head_groups, importance.channels, strict=True):
        layers.append(
            LayerSelection(
                kv_groups=_top(groups, layer.heads // group_size),
                channels=_top(channels, layer.ffn_channels),
            )
        )
    return Selection(arch, tuple(layers))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    if k >= scores.numel():
        return torch.arange(scores.numel())
    # stable sort: ties go to the lower index, so selection is deterministic
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return torch.sort(order).values
