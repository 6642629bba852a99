"""Snap any sampled proposal to the parameter budget, so no trial is wasted on an infeasible config.

A proposal gives, for every layer, a desired keep fraction of attention and of the MLP in [0, 1]
(and optionally an unstructured sparsity ratio). Repair scales all fractions by one common factor
(bisection; the parameter count is monotone in it), rounds to whole KV groups and FFN alignment
units under the depth rule, then moves single units until the count is within the tolerance. The
shape of the proposal (which layers keep more) is preserved.

Depth rules: ``sublayer`` drops attention and MLP independently; ``layer`` drops whole layers only
(a layer keeping one sub-block keeps at least one unit of the other); ``none`` keeps at least one
unit of every sub-block. With ``width=False`` fractions round to all-or-nothing, and only the
final unit moves that land on the budget change widths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from search.arch import ArchConfig, LayerArch, ModelShape
from search.errors import BudgetInfeasible

DEFAULT_TOLERANCE = 0.01
MAX_SPARSITY = 0.95


@dataclass(frozen=True)
class Proposal:
    """Per-layer keep fractions as the sampler proposes them (before snapping to the grid)."""

    attention: tuple[float, ...]
    mlp: tuple[float, ...]
    sparsity: tuple[float, ...] = ()  # per layer; empty means dense weights
    # Per layer, how much the sampler wants to keep it (standard format: the order layers are
    # dropped in); empty means by its attention + MLP fractions.
    keep: tuple[float, ...] = ()

    @classmethod
    def uniform(cls, num_layers: int, value: float = 1.0) -> Proposal:
        return cls((value,) * num_layers, (value,) * num_layers)

    @classmethod
    def standard(cls, keep: Sequence[float], drop: int, attention: float, mlp: float) -> Proposal:
        """Drop the ``drop`` layers of lowest ``keep``; every other layer keeps these fractions."""
        kept = set(layer_order(keep)[: len(keep) - drop])
        fractions = [(attention, mlp) if i in kept else (0.0, 0.0) for i in range(len(keep))]
        return cls(tuple(a for a, _ in fractions), tuple(m for _, m in fractions), keep=tuple(keep))


def layer_order(keep: Sequence[float]) -> list[int]:
    """Layers from the most wanted to the least (ties: the earlier layer first)."""
    return sorted(range(len(keep)), key=lambda i: (-keep[i], i))


@dataclass(frozen=True)
class _Grid:
    shape: ModelShape
    alignment: int
    depth: str
    width: bool

    def heads(self, fraction: float) -> int:
        return self._round(fraction, self.shape.num_heads, self.shape.group_size)

    def channels(self, fraction: float) -> int:
        return self._round(fraction, self.shape.intermediate_size, self.alignment)

    def _round(self, fraction: float, full: int, unit: int) -> int:
        if fraction <= 0:
            return 0
        if not self.width:
            return full if fraction >= 0.5 else 0
        return min(round(min(fraction, 1.0) * full / unit) * unit, full)

    def legal(self, layer: LayerArch) -> LayerArch:
        """Apply the depth rule to a rounded layer."""
        heads, channels = layer.heads, layer.ffn_channels
        if self.depth == "none" or (self.depth == "layer" and (heads or channels)):
            heads = max(heads, self.shape.group_size)
            channels = max(channels, min(self.alignment, self.shape.intermediate_size))
        return LayerArch(heads, channels, layer.sparsity)

    def count(self, layers: Sequence[LayerArch]) -> int:
        shape = self.shape
        return shape.fixed + sum(
            shape.attention_params(layer.heads, layer.sparsity) + shape.mlp_params(layer.ffn_channels, layer.sparsity)
            for layer in layers
        )


def repair(
    shape: ModelShape,
    proposal: Proposal,
    param_ratio: float,
    *,
    ffn_alignment: int,
    depth: str = "sublayer",
    width: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ArchConfig:
    """Return the architecture closest to ``proposal`` whose parameter count is within ``tolerance``
    (relative) of ``param_ratio`` times the dense count."""
    scaling = _Scaling.of(shape, proposal, ffn_alignment=ffn_alignment, depth=depth, width=width)
    grid, snap = scaling.grid, scaling.snap
    budget = param_ratio * shape.dense_params()
    low, high = budget * (1 - tolerance), budget * (1 + tolerance)
    # The largest useful factor makes the smallest positive fraction reach 1; if even that is under
    # budget (the proposal drops too much), ``_adjust`` adds units back.
    lo_scale, hi_scale = 0.0, scaling.top
    while hi_scale - lo_scale > 1e-6 * hi_scale:  # ~20 steps: finer scales change no unit
        mid = (lo_scale + hi_scale) / 2
        if grid.count(snap(mid)) > budget:
            hi_scale = mid
        else:
            lo_scale = mid
    layers = _adjust(grid, (scaling.attention, scaling.mlp), snap(lo_scale), low, high)
    arch = ArchConfig(tuple(layers))
    shape.validate(arch)
    return arch


def repair_within(
    shape: ModelShape,
    proposal: Proposal,
    fits: Callable[[Sequence[LayerArch]], bool],
    *,
    ffn_alignment: int,
    depth: str = "sublayer",
    width: bool = True,
) -> ArchConfig:
    """The proposal scaled by the largest common factor whose snapped architecture ``fits``.

    ``fits`` must be monotone (what fits still fits with fewer units), like a cap on parameters or
    on predicted latency (``search.latency``). Unlike ``repair``, this lands at or under a cap rather
    than on a count: it is the repair of budgets that are upper bounds."""
    scaling = _Scaling.of(shape, proposal, ffn_alignment=ffn_alignment, depth=depth, width=width)
    snap, top = scaling.snap, scaling.top
    # The smallest scale that keeps a sub-block: a candidate that keeps nothing cannot be exported.
    lo_scale, hi_scale = _least_scale(lambda scale: any(x.heads or x.ffn_channels for x in snap(scale)), top), top
    if not fits(snap(lo_scale)):
        raise BudgetInfeasible(f"no candidate under depth={depth!r} fits the budget: even the smallest is over it")
    if fits(snap(hi_scale)):
        lo_scale = hi_scale
    while hi_scale - lo_scale > 1e-6 * hi_scale:
        mid = (lo_scale + hi_scale) / 2
        if fits(snap(mid)):
            lo_scale = mid
        else:
            hi_scale = mid
    arch = ArchConfig(tuple(snap(lo_scale)))
    shape.validate(arch)
    return arch


@dataclass(frozen=True)
class _Scaling:
    """A proposal's fractions on a model's grid: ``snap(scale)`` is the architecture that keeps every
    fraction times one common factor, snapped to legal units. Both repairs search that factor."""

    grid: _Grid
    attention: list[float]
    mlp: list[float]
    sparsity: list[float]

    @classmethod
    def of(cls, shape: ModelShape, proposal: Proposal, *, ffn_alignment: int, depth: str, width: bool) -> _Scaling:
        layers_n = shape.num_layers
        if len(proposal.attention) != layers_n or len(proposal.mlp) != layers_n:
            raise BudgetInfeasible(f"proposal has {len(proposal.attention)} layers, model has {layers_n}")
        sparsity = [round(min(_clip(x), MAX_SPARSITY), 2) for x in proposal.sparsity] or [0.0] * layers_n
        if len(sparsity) != layers_n:
            raise BudgetInfeasible(f"proposal has {len(sparsity)} sparsity ratios, model has {layers_n} layers")
        grid = _Grid(shape, max(1, min(ffn_alignment, shape.intermediate_size)), depth, width)
        attention = [_clip(x) for x in proposal.attention]
        mlp = [_clip(x) for x in proposal.mlp]
        if max(attention + mlp) == 0.0:
            # Nothing proposed: start from uniform so there is a shape to scale.
            attention, mlp = [1.0] * layers_n, [1.0] * layers_n
        return cls(grid, attention, mlp, sparsity)

    @property
    def top(self) -> float:
        """The factor at which the smallest positive fraction reaches 1: no larger one changes a unit."""
        return 1.0 / min(x for x in self.attention + self.mlp if x > 0)

    def snap(self, scale: float) -> list[LayerArch]:
        grid = self.grid
        return [
            grid.legal(LayerArch(grid.heads(a * scale), grid.channels(m * scale), s))
            for a, m, s in zip(self.attention, self.mlp, self.sparsity, strict=True)
        ]


def _least_scale(keeps: Callable[[float], bool], top: float) -> float:
    """The least scale in [0, top] at which ``keeps`` (monotone in the scale) holds, by bisection."""
    if keeps(0.0):
        return 0.0
    low, high = 0.0, top
    while high - low > 1e-6 * top:
        mid = (low + high) / 2
        low, high = (low, mid) if keeps(mid) else (mid, high)
    return high


def _adjust(
    grid: _Grid,
    proposal: tuple[Sequence[float], Sequence[float]],
    layers: list[LayerArch],
    low: float,
    high: float,
) -> list[LayerArch]:
    """Move single units until the count is within [low, high].

    FFN units are smaller than the window (``check_budget`` guarantees it), so stepping FFN units
    never jumps over the window. A KV group is moved only when no FFN unit can move, which happens
    when the proposal dropped too much attention (or kept too little MLP) for the budget.
    """
    shape, alignment = grid.shape, grid.alignment
    attention_wanted, mlp_wanted = proposal
    layers = list(layers)
    full, heads, group = shape.intermediate_size, shape.num_heads, shape.group_size
    for _ in range(shape.num_layers * (full // alignment + heads // group + 4)):
        total = grid.count(layers)
        if low <= total <= high:
            return layers
        grow = total < low
        sign = 1 if grow else -1
        ffn = [i for i, layer in enumerate(layers) if _can_move(grid, layer, "mlp", grow)]
        if ffn:
            # Grow where the kept fraction is furthest below the proposal; shrink where furthest above.
            i = max(ffn, key=lambda j: (sign * (mlp_wanted[j] - layers[j].ffn_channels / full), -j))
            channels = layers[i].ffn_channels
            channels = min(full, channels + alignment) if grow else math.ceil(channels / alignment - 1) * alignment
            layers[i] = LayerArch(layers[i].heads, channels, layers[i].sparsity)
            continue
        attn = [i for i, layer in enumerate(layers) if _can_move(grid, layer, "attention", grow)]
        if not attn:
            dropped = [i for i, layer in enumerate(layers) if not layer.heads and not layer.ffn_channels]
            if not grow or not dropped:
                break
            # The proposal dropped more whole layers than the budget allows: revive the one it wanted most.
            i = max(dropped, key=lambda j: (attention_wanted[j] + mlp_wanted[j], -j))
            layers[i] = LayerArch(group, min(alignment, full), layers[i].sparsity)
            continue
        i = max(attn, key=lambda j: (sign * (attention_wanted[j] - layers[j].heads / heads), -j))
        layers[i] = LayerArch(layers[i].heads + sign * group, layers[i].ffn_channels, layers[i].sparsity)
    raise BudgetInfeasible(
        f"cannot reach {low:.0f}..{high:.0f} parameters under depth={grid.depth!r}: the FFN alignment "
        f"({alignment}) is too coarse or the depth rule too strict for this model and budget"
    )


def _can_move(grid: _Grid, layer: LayerArch, kind: str, grow: bool) -> bool:
    """Whether one unit of ``kind`` may be added to / removed from ``layer`` under the depth rule."""
    shape = grid.shape
    units, full, unit = (
        (layer.ffn_channels, shape.intermediate_size, grid.alignment)
        if kind == "mlp"
        else (layer.heads, shape.num_heads, shape.group_size)
    )
    other = layer.heads if kind == "mlp" else layer.ffn_channels
    if grow:
        # Under the layer rule, a wholly dropped layer stays dropped: reviving it is not one unit.
        return units < full and not (grid.depth == "layer" and units == 0 and other == 0)
    if units == 0:
        return False
    if units <= unit:  # the move would drop the sub-block
        return grid.depth == "sublayer"
    return True


def _clip(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(max(value, 0.0), 1.0)
