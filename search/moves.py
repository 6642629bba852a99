"""Budget-preserving moves between sub-blocks, and how far apart two architectures are (torch-free).

EvoPress's mutation (Sieberling et al., 2024) lowers one unit's compression level and raises
another's by the same amount, so an offspring stays on its parent's budget. Here a move takes a
share of one sub-block's parameters and gives the same number of parameters to another sub-block,
in the trial parameters' own terms (keep fractions, each with the parameters a whole sub-block
costs); repair then snaps the result onto the grid. ``perturb`` is the small step of a parameter
without a cost. The ``evo`` sampler mutates with both, and the trust audit perturbs the search's
best with both to look where the search looked.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from search.arch import ArchConfig, ModelShape

# A move shifts at most this share of the blocks' parameters (one head group or a few FFN channels
# on small models; EvoPress moves one level of a ten-level grid).
DEFAULT_STEP = 0.02
# A step of a parameter without a cost (sparsity, the compact and standard-format numbers): its
# standard deviation as a share of the parameter's range.
STEP_SIGMA = 0.1


def fraction_costs(shape: ModelShape, names: Mapping[str, object]) -> dict[str, float]:
    """The parameters a whole sub-block costs, for every per-layer keep fraction among ``names``
    (``attention.i`` and ``mlp.i``); other parameters (sparsity, compact shape numbers) have none."""
    attention = float(shape.attention_params(shape.num_heads))
    mlp = float(shape.mlp_params(shape.intermediate_size))
    costs: dict[str, float] = {}
    for name in names:
        kind, _, index = name.partition(".")
        if index.isdigit() and kind in ("attention", "mlp"):
            costs[name] = attention if kind == "attention" else mlp
    return costs


def move_budget(
    values: Mapping[str, float],
    costs: Mapping[str, float],
    rng: random.Random,
    *,
    moves: int = 1,
    step: float = DEFAULT_STEP,
) -> dict[str, float]:
    """``values`` after ``moves`` transfers of parameters from one sub-block to another.

    Each transfer picks a donor with something left and a receiver with room, and moves up to
    ``step`` of the costed parameters' total (less when the donor has less or the receiver less
    room), so Σ value·cost is unchanged and every value stays in [0, 1]. A donor emptied by a move
    is a dropped sub-block; a receiver raised from 0 is a revived one."""
    result = dict(values)
    names = sorted(costs)
    total = sum(costs[n] for n in names)
    if len(names) < 2 or total <= 0:
        return result
    for _ in range(moves):
        donors = [n for n in names if result[n] > 0]
        receivers = [n for n in names if result[n] < 1]
        if not donors or not receivers:
            break
        donor = rng.choice(donors)
        receiver = rng.choice([n for n in receivers if n != donor] or receivers)
        if receiver == donor:
            break
        amount = min(
            step * total * rng.uniform(0.5, 1.0),
            result[donor] * costs[donor],
            (1 - result[receiver]) * costs[receiver],
        )
        result[donor] = max(0.0, result[donor] - amount / costs[donor])
        result[receiver] = min(1.0, result[receiver] + amount / costs[receiver])
    return result


def arch_distance(shape: ModelShape, a: ArchConfig, b: ArchConfig) -> float:
    """The share of the blocks' parameters that differs between two candidates: half the sum over
    sub-blocks of |kept parameters of a − of b|, over the dense blocks' parameters (0: the same
    widths everywhere; a move of ``step`` changes it by about ``step``)."""
    moved = 0
    for x, y in zip(a.layers, b.layers, strict=True):
        moved += abs(shape.attention_params(x.heads, x.sparsity) - shape.attention_params(y.heads, y.sparsity))
        moved += abs(shape.mlp_params(x.ffn_channels, x.sparsity) - shape.mlp_params(y.ffn_channels, y.sparsity))
    blocks = shape.dense_params() - shape.fixed
    return moved / 2 / blocks if blocks else 0.0


def perturb(value: Any, distribution: BaseDistribution, rng: random.Random) -> Any:
    """A small random step of one parameter within its distribution: Gaussian for floats (in log space
    for log ones, onto the step grid for stepped ones), ±one step for integers, another choice for
    categories."""
    if isinstance(distribution, FloatDistribution):
        low, high = distribution.low, distribution.high
        if distribution.log:
            moved = math.exp(rng.gauss(math.log(value), STEP_SIGMA * (math.log(high) - math.log(low))))
        else:
            moved = rng.gauss(value, STEP_SIGMA * (high - low))
        if distribution.step is not None:
            moved = low + round((moved - low) / distribution.step) * distribution.step
        return min(high, max(low, moved))
    if isinstance(distribution, IntDistribution):
        moved = value + rng.choice((-1, 1)) * distribution.step
        if not distribution.low <= moved <= distribution.high:
            moved = 2 * value - moved  # at a bound: step inwards
        return int(min(distribution.high, max(distribution.low, moved)))
    if isinstance(distribution, CategoricalDistribution):
        choices = [c for c in distribution.choices if c != value]
        return rng.choice(choices) if choices else value
    return value
