"""What a structured selection criterion is: a score for every KV group and FFN channel of a model.

Criteria from the dense statistics (``ChannelCriterion``) score the input channels of the output
projections (``o_proj`` / ``down_proj`` and their equivalents) and sum heads into whole KV groups,
so every selection exports as a valid GQA model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from search.adapters import Adapter
from search.artifacts import ModelArtifacts
from search.stats import ChannelStats, DenseStats
from search.units import Importance


class Criterion(ABC):
    name: ClassVar[str]
    # Whether the importance depends on the job's seed (a trained policy); it is then cached per seed.
    seeded: ClassVar[bool] = False

    @abstractmethod
    def importance(self, adapter: Adapter, stats: DenseStats, *, seed: int, artifacts: ModelArtifacts) -> Importance:
        """Scores of every KV group and FFN channel of every layer; higher = kept first."""


class ChannelCriterion(Criterion):
    """A criterion that scores an output projection's input channels from its weight and inputs."""

    @abstractmethod
    def channel_scores(self, weight: torch.Tensor, inputs: ChannelStats) -> torch.Tensor:
        """(C,) scores of the input channels of ``weight`` (hidden, C), on the weight's device."""

    @torch.no_grad()
    def importance(self, adapter: Adapter, stats: DenseStats, *, seed: int, artifacts: ModelArtifacts) -> Importance:
        shape = adapter.shape
        attention_name, mlp_name = adapter.output_names
        groups, channels = [], []
        for i in range(shape.num_layers):
            head_scores = self._scores(
                adapter.weight(adapter.attention_output(i)), stats.attention_output(i, attention_name)
            )
            groups.append(head_scores.view(shape.num_kv_heads, -1).sum(1))  # (H*D,) -> group k = g heads × D dims
            channels.append(self._scores(adapter.weight(adapter.mlp_output(i)), stats.mlp_output(i, mlp_name)))
        return Importance(tuple(groups), tuple(channels))

    def _scores(self, weight: torch.Tensor, inputs: ChannelStats) -> torch.Tensor:
        # (hidden, C), on the model's device: no copy of the weights to the host
        return self.channel_scores(weight.detach().float(), inputs).cpu()
