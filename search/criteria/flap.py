"""``flap``: Var(X_j) · Σ_i W_ij², FLAP's fluctuation (its bias compensation is not applied)."""

from __future__ import annotations

import torch

from search.criteria.base import ChannelCriterion
from search.stats import ChannelStats


class Flap(ChannelCriterion):
    name = "flap"

    def channel_scores(self, weight: torch.Tensor, inputs: ChannelStats) -> torch.Tensor:
        return inputs.var.to(weight.device) * weight.pow(2).sum(0)
