"""Snap any sampled proposal to the parameter budget, so no trial is wasted on an infeasible config.

A proposal gives, for every layer, a desired keep fraction of attention and of the MLP in [0, 1].
Repair scales all fractions by one common factor (bisection; the parameter count is monotone in it),
rounds to whole KV groups and FFN alignment units, then trims or grows single FFN units until the
count is within the tolerance. The shape of the proposal (which layers keep more) is preserved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from search.arch import ArchConfig, LayerArch, ModelShape
from search.errors import BudgetInfeasible

DEFAULT_TOLERANCE = 0.01


@dataclass(frozen=True)
class Proposal:
    """Per-layer keep fractions as the sampler proposes them (before snapping to the grid)."""

    attention: tuple[float, ...]
    mlp: tuple[float, ...]

    @classmethod
    def uniform(cls, num_layers: int, value: float = 1.0) -> Proposal:
        return cls((value,) * num_layers, (value,) * num_layers)


def repair(
    shape: ModelShape,
    proposal: Proposal,
    param_ratio: float,
    *,
    ffn_alignment: int,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ArchConfig:
    """Return the architecture closest to ``proposal`` whose parameter count is within ``tolerance``
    (relative) of ``param_ratio`` times the dense count."""
    if len(proposal.attention) != shape.num_layers or len(proposal.mlp) != shape.num_layers:
        raise BudgetInfeasible(f"proposal has {len(proposal.attention)} layers, model has {shape.num_layers}")
    dense = shape.dense_params()
    budget = param_ratio * dense
    low, high = budget * (1 - tolerance), budget * (1 + tolerance)
    attention = [_clip(x) for x in proposal.attention]
    mlp = [_clip(x) for x in proposal.mlp]
    alignment = max(1, min(ffn_alignment, shape.intermediate_size))

    if max(attention + mlp, default=0.0) == 0.0:
        # Nothing proposed: start from uniform so there is a shape to scale.
        attention, mlp = [1.0] * shape.num_layers, [1.0] * shape.num_layers

    def snap(scale: float) -> list[LayerArch]:
        return [
            LayerArch(
                _round_units(a * scale, shape.num_heads, shape.group_size),
                _round_units(m * scale, shape.intermediate_size, alignment),
            )
            for a, m in zip(attention, mlp, strict=True)
        ]

    def count(layers: Sequence[LayerArch]) -> int:
        return shape.fixed_params() + sum(
            shape.attention_params(layer.heads) + shape.mlp_params(layer.ffn_channels) for layer in layers
        )

    # The largest useful factor makes the smallest positive fraction reach 1; if even that is under
    # budget (the proposal drops too much), growth in ``_adjust`` adds FFN units back.
    lo_scale, hi_scale = 0.0, 1.0 / min(x for x in attention + mlp if x > 0)
    for _ in range(60):
        mid = (lo_scale + hi_scale) / 2
        if count(snap(mid)) > budget:
            hi_scale = mid
        else:
            lo_scale = mid
    layers = snap(lo_scale)
    layers = _adjust(shape, (attention, mlp), layers, count, low, high, alignment)
    arch = ArchConfig(tuple(layers))
    shape.validate(arch)
    return arch


def _adjust(
    shape: ModelShape,
    proposal: tuple[Sequence[float], Sequence[float]],
    layers: list[LayerArch],
    count: Callable[[Sequence[LayerArch]], int],
    low: float,
    high: float,
    alignment: int,
) -> list[LayerArch]:
    """Move single units until the count is within [low, high].

    FFN units are smaller than the window (``check_budget`` guarantees it), so stepping FFN units
    never jumps over the window. A KV group is moved only when no FFN unit can move, which happens
    when the proposal dropped too much attention (or kept too little MLP) for the budget.
    """
    attention_wanted, mlp_wanted = proposal
    layers = list(layers)
    full, heads, group = shape.intermediate_size, shape.num_heads, shape.group_size
    for _ in range(shape.num_layers * (full // alignment + heads // group + 4)):
        total = count(layers)
        if low <= total <= high:
            return layers
        grow = total < low
        ffn = [i for i, layer in enumerate(layers) if (layer.ffn_channels < full if grow else layer.ffn_channels > 0)]
        if ffn:
            # Grow where the kept fraction is furthest below the proposal; shrink where furthest above.
            sign = 1 if grow else -1
            i = max(ffn, key=lambda j: (sign * (mlp_wanted[j] - layers[j].ffn_channels / full), -j))
            channels = layers[i].ffn_channels
            channels = min(full, channels + alignment) if grow else math.ceil(channels / alignment - 1) * alignment
            layers[i] = LayerArch(layers[i].heads, channels)
            continue
        attn = [i for i, layer in enumerate(layers) if (layer.heads < heads if grow else layer.heads > 0)]
        if not attn:
            break
        sign = 1 if grow else -1
        i = max(attn, key=lambda j: (sign * (attention_wanted[j] - layers[j].heads / heads), -j))
        layers[i] = LayerArch(layers[i].heads + (group if grow else -group), layers[i].ffn_channels)
    raise BudgetInfeasible(
        f"cannot reach {low:.0f}..{high:.0f} parameters: the FFN alignment ({alignment}) is too coarse "
        f"for this model and budget"
    )


def _round_units(fraction: float, full: int, unit: int) -> int:
    """Round ``fraction * full`` to a multiple of ``unit`` (the last unit may be partial)."""
    if fraction <= 0:
        return 0
    value = round(min(fraction, 1.0) * full / unit) * unit
    return min(value, full)


def _clip(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(max(value, 0.0), 1.0)
