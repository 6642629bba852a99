"""Which units of a layer a candidate keeps, and how important each unit is: the plain data that
adapters, selection criteria, masking and proxies share (so none of them imports another for it)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class LayerSelection:
    kv_groups: torch.Tensor  # sorted indices of kept KV groups
    channels: torch.Tensor  # sorted indices of kept FFN channels


@dataclass(frozen=True)
class Importance:
    """A selection criterion's scores (``search.criteria``); higher = kept first."""

    head_groups: tuple[torch.Tensor, ...]  # per layer: (KV,)
    channels: tuple[torch.Tensor, ...]  # per layer: (I,)

    @cached_property
    def ranks(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Each unit's place in its layer's order (0 = most important), ranked once: a trial keeping
        k units keeps those ranked below k, with no sort per trial."""
        return tuple(_ranks(s) for s in self.head_groups), tuple(_ranks(s) for s in self.channels)


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    # stable sort: ties go to the lower index, so selection is deterministic
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))
