"""``magnitude``: Σ_i |W_ij| over an output projection's rows, per input channel j."""

from __future__ import annotations

import torch

from search.criteria.base import ChannelCriterion
from search.stats import ChannelStats


class Magnitude(ChannelCriterion):
    name = "magnitude"

    def channel_scores(self, weight: torch.Tensor, inputs: ChannelStats) -> torch.Tensor:
        return weight.abs().sum(0)
