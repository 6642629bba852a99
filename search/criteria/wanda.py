"""``wanda``: Σ_i |W_ij| · ‖X_j‖₂, the weight's magnitude times its input's norm on the calibration tokens."""

from __future__ import annotations

import torch

from search.criteria.base import ChannelCriterion
from search.stats import ChannelStats


class Wanda(ChannelCriterion):
    name = "wanda"

    def channel_scores(self, weight: torch.Tensor, inputs: ChannelStats) -> torch.Tensor:
        return (weight.abs() * inputs.norm.to(weight.device)).sum(0)
