"""The search space: how an Optuna trial's parameters become a proposal, and the baseline seeds.

Two parameterisations:
- ``per_layer``: one keep fraction per sub-block (``attention.i``, ``mlp.i``) and, with sparsity
  enabled, one ratio per layer (``sparsity.i``): 2-3 parameters per layer.
- ``compact``: five numbers whatever the depth: ``slope`` (keep more early or late layers),
  ``balance`` (attention versus MLP), ``drop_layers`` (the layers of lowest Block Influence are
  dropped), ``drop_attention`` (then the attention sub-blocks of lowest importance) and a global
  ``sparsity``. Fewer parameters make each trial cheaper to sample and store, at some loss of
  expressiveness.
- ``export_format: "standard"``: what a family's own config expresses (``search.standard``): a
  keep score per layer (``keep.i``; with ``compact``, Block Influence instead), ``drop_layers``,
  and one ``attention`` and one ``mlp`` fraction for every kept layer; ``repair_standard`` lands it
  on the budget with one head count and one FFN width.
Seeds are expressed in the same parameters, so they are ordinary (enqueued) trials.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from search import names
from search.arch import ModelShape
from search.artifacts import Artifact
from search.repair import DEFAULT_TOLERANCE, Proposal
from search.spec import SearchSpace


@dataclass(frozen=True)
class LayerSignals:
    """Per-layer signals the compact space and the seeds rank layers by (computed once)."""

    block_influence: torch.Tensor  # (L,) ShortGPT BI, higher = more important
    attention_importance: torch.Tensor  # (L,) summed head-group importance, normalised
    outlier_ratio: torch.Tensor  # (L,) OWL: share of weights with outlying Wanda scores


# The dense model's layer signals per calibration digest (computed by ``search.candidates.prepare``).
LAYER_SIGNALS: Artifact[str, LayerSignals] = Artifact("layer-signals")


class Space:
    def __init__(self, shape: ModelShape, space: SearchSpace, signals: LayerSignals) -> None:
        self.shape = shape
        self.space = space
        self.signals = signals

    @property
    def standard(self) -> bool:
        return self.space.export_format == names.STANDARD

    def suggest(self, trial: optuna.trial.BaseTrial) -> Proposal:
        if self.standard:
            return self._standard(trial)
        if self.space.parameterization == "compact":
            return self._compact(trial)
        layers = range(self.shape.num_layers)
        attention = tuple(trial.suggest_float(f"attention.{i}", 0.0, 1.0) for i in layers)
        mlp = tuple(trial.suggest_float(f"mlp.{i}", 0.0, 1.0) for i in layers)
        sparsity: tuple[float, ...] = ()
        if self.space.sparsity > 0:
            sparsity = tuple(trial.suggest_float(f"sparsity.{i}", 0.0, self.space.sparsity) for i in layers)
        return Proposal(attention, mlp, sparsity)

    def proposal(self, params: Mapping[str, Any]) -> Proposal:
        """The proposal a trial with these parameters makes, without a trial (the ``evo`` sampler
        keys an offspring by its repaired candidate before proposing it). A missing parameter
        raises ``ValueError``."""
        return self.suggest(optuna.trial.FixedTrial(dict(params)))

    def _compact(self, trial: optuna.trial.BaseTrial) -> Proposal:
        layers = self.shape.num_layers
        slope = trial.suggest_float("slope", -1.0, 1.0)
        balance = trial.suggest_float("balance", -1.0, 1.0)
        drop_layers = drop_attention = 0
        if self.space.depth != "none":
            drop_layers = trial.suggest_int("drop_layers", 0, layers // 2)
        if self.space.depth == "sublayer":
            drop_attention = trial.suggest_int("drop_attention", 0, layers // 2)
        sparsity = trial.suggest_float("sparsity", 0.0, self.space.sparsity) if self.space.sparsity > 0 else 0.0
        return self.compact_proposal(slope, balance, drop_layers, drop_attention, sparsity)

    def _standard(self, trial: optuna.trial.BaseTrial) -> Proposal:
        """Which layers stay (a keep score per layer, or Block Influence when compact), how many are
        dropped, and one attention and one MLP fraction for all kept layers; repair lands on the budget."""
        layers = range(self.shape.num_layers)
        if self.space.parameterization == "compact":
            keep = tuple(self.signals.block_influence.tolist())
        else:
            keep = tuple(trial.suggest_float(f"keep.{i}", 0.0, 1.0) for i in layers)
        if not self.space.width:
            return Proposal.standard(keep, 0, 1.0, 1.0)  # repair drops what the budget needs, by keep
        drop = trial.suggest_int("drop_layers", 0, len(layers) - 1) if self.space.depth != "none" else 0
        attention = trial.suggest_float("attention", 0.0, 1.0)
        mlp = trial.suggest_float("mlp", 0.0, 1.0)
        return Proposal.standard(keep, drop, attention, mlp)

    def compact_proposal(
        self, slope: float, balance: float, drop_layers: int, drop_attention: int, sparsity: float
    ) -> Proposal:
        layers = self.shape.num_layers
        positions = [i / max(layers - 1, 1) - 0.5 for i in range(layers)]  # -0.5 .. 0.5
        base = [min(1.0, max(0.05, 1.0 + 2.0 * slope * p)) for p in positions]
        attention = [b * min(1.0, 1.0 + balance) for b in base]
        mlp = [b * min(1.0, 1.0 - balance) for b in base]
        dropped = torch.argsort(self.signals.block_influence, stable=True)[:drop_layers].tolist()
        for i in dropped:
            attention[i] = mlp[i] = 0.0
        remaining = [
            i for i in torch.argsort(self.signals.attention_importance, stable=True).tolist() if i not in dropped
        ]
        for i in remaining[:drop_attention]:
            attention[i] = 0.0
        return Proposal(tuple(attention), tuple(mlp), (sparsity,) * layers if sparsity else ())

    def seeds(self, param_ratio: float) -> dict[str, dict[str, Any]]:
        """Baselines at the same budget, as trial parameters: uniform width, ShortGPT Block-Influence
        depth removal, and (with sparsity) OWL's outlier-weighted layerwise sparsity."""
        if self.standard:
            return self._standard_seeds(param_ratio)
        seeds = {"seed:uniform": self._params(Proposal.uniform(self.shape.num_layers), 0, 0.0)}
        if self.space.depth != "none":
            dropped = block_influence_drop_count(self.shape, param_ratio)
            lowest = set(torch.argsort(self.signals.block_influence, stable=True)[:dropped].tolist())
            kept = tuple(0.0 if i in lowest else 1.0 for i in range(self.shape.num_layers))
            seeds["seed:block_influence"] = self._params(Proposal(kept, kept), dropped, 0.0)
        if self.space.sparsity > 0:
            ratios = owl_sparsity(self.shape, self.signals.outlier_ratio, param_ratio, self.space.sparsity)
            full = Proposal.uniform(self.shape.num_layers)
            seeds["seed:owl"] = self._params(Proposal(full.attention, full.mlp, ratios), 0, sum(ratios) / len(ratios))
        return seeds

    def _standard_seeds(self, param_ratio: float) -> dict[str, dict[str, Any]]:
        """The baselines a standard config expresses: uniform width, and ShortGPT's Block-Influence
        depth removal (the per-layer allocations and OWL are not standard)."""
        layers = self.shape.num_layers
        seeds = {"seed:uniform": self._standard_params((1.0,) * layers, 0)}
        if self.space.depth != "none":
            dropped = block_influence_drop_count(self.shape, param_ratio)
            lowest = set(torch.argsort(self.signals.block_influence, stable=True)[:dropped].tolist())
            seeds["seed:block_influence"] = self._standard_params(
                tuple(0.0 if i in lowest else 1.0 for i in range(layers)), dropped
            )
        return seeds

    def _standard_params(self, keep: tuple[float, ...], drop_layers: int) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.space.parameterization != "compact":
            params |= {f"keep.{i}": v for i, v in enumerate(keep)}
        if self.space.width:
            if self.space.depth != "none":
                params["drop_layers"] = drop_layers
            params |= {"attention": 1.0, "mlp": 1.0}
        return params

    def _params(self, proposal: Proposal, drop_layers: int, sparsity: float) -> dict[str, Any]:
        if self.space.parameterization == "compact":
            params: dict[str, Any] = {"slope": 0.0, "balance": 0.0}
            if self.space.depth != "none":
                params["drop_layers"] = drop_layers
            if self.space.depth == "sublayer":
                params["drop_attention"] = 0
            if self.space.sparsity > 0:
                params["sparsity"] = sparsity
            return params
        params = {f"attention.{i}": v for i, v in enumerate(proposal.attention)}
        params |= {f"mlp.{i}": v for i, v in enumerate(proposal.mlp)}
        if self.space.sparsity > 0:
            values = proposal.sparsity or (0.0,) * self.shape.num_layers
            params |= {f"sparsity.{i}": v for i, v in enumerate(values)}
        return params


def block_influence_drop_count(shape: ModelShape, param_ratio: float) -> int:
    """How many whole layers ShortGPT drops at this budget (repair trims FFN width for the rest)."""
    low = param_ratio * shape.dense_params() * (1 - DEFAULT_TOLERANCE)
    per_layer = shape.attention_params(shape.num_heads) + shape.mlp_params(shape.intermediate_size)
    return max(0, min(shape.num_layers - 1, int((shape.dense_params() - low) // per_layer)))


def owl_sparsity(
    shape: ModelShape, outlier_ratio: torch.Tensor, param_ratio: float, ceiling: float, spread: float = 0.08
) -> tuple[float, ...]:
    """OWL: layerwise sparsity around the uniform ratio that meets the budget at full width, lower
    for layers with more outliers, within ±``spread`` of it."""
    prunable = (
        sum(
            rows * cols
            for rows, cols in shape.attention_matrices(shape.num_heads) + shape.mlp_matrices(shape.intermediate_size)
        )
        * shape.num_layers
    )
    excess = shape.dense_params() * (1 - param_ratio)
    mean = min(ceiling, max(0.0, excess / prunable))
    centred = outlier_ratio - outlier_ratio.mean()
    scale = centred.abs().max()
    offsets = -spread * centred / scale if scale > 0 else torch.zeros_like(centred)
    return tuple(float(min(ceiling, max(0.0, mean + o))) for o in offsets.tolist())
