"""The standard format: which architectures a family's own ``config.json`` expresses. Torch-free.

A standard architecture drops whole layers and gives every kept layer both sub-blocks with one
head count and one FFN width, so the export loads with plain ``from_pretrained`` (and any runtime
that loads the family). The head counts allowed depend on the family: GPT-2 and BERT derive the
head size from hidden / heads and cannot write fewer heads; Llama-style configs store ``head_dim``,
but transformers still refuses a hidden size that is not a multiple of the head count (e.g. 24
heads of 4096). The export (``search.export``) and the standard search space (``search.repair``)
both read this module, so what the search proposes is exactly what the export writes as standard.

``repair_standard`` snaps any proposal onto that grid at the budget (the per-layer repair would
break uniformity); ``check_standard_budget`` refuses a budget no standard architecture meets.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from search.arch import ArchConfig, LayerArch, ModelShape
from search.errors import BudgetInfeasible
from search.families import family_for
from search.repair import DEFAULT_TOLERANCE, Proposal, layer_order


def standard_heads(shape: ModelShape) -> tuple[int, ...]:
    """The query-head counts a standard config of ``shape``'s family can write, ascending (whole KV groups)."""
    if family_for(shape.model_type).head_keys is None:
        return (shape.num_heads,)
    group = shape.group_size
    return tuple(
        heads
        for heads in range(group, shape.num_heads + 1, group)
        if heads == shape.num_heads or shape.hidden_size % heads == 0
    )


def is_standard(shape: ModelShape, arch: ArchConfig) -> bool:
    """Whether the family's own config expresses ``arch`` (what ``search.export`` writes as "standard")."""
    if not arch.is_uniform():
        return False
    kept = [layer for layer in arch.layers if layer.attention_kept]
    return bool(kept) and kept[0].heads in standard_heads(shape)


@dataclass(frozen=True)
class _Grid:
    """The standard architectures of a shape: kept-layer counts × head counts × FFN widths."""

    shape: ModelShape
    depths: tuple[int, ...]  # how many layers may be kept
    heads: tuple[int, ...]  # ascending
    channels: tuple[int, ...]  # ascending multiples of the alignment, and the full width

    @classmethod
    def of(cls, shape: ModelShape, *, ffn_alignment: int, depth: str, width: bool) -> _Grid:
        full = shape.intermediate_size
        alignment = max(1, min(ffn_alignment, full))
        return cls(
            shape,
            (shape.num_layers,) if depth == "none" else tuple(range(1, shape.num_layers + 1)),
            standard_heads(shape) if width else (shape.num_heads,),
            (*range(alignment, full, alignment), full),
        )

    def count(self, layers: int, heads: int, channels: int) -> int:
        shape = self.shape
        return shape.fixed + layers * (shape.attention_params(heads) + shape.mlp_params(channels))

    def widths(self, layers: int, heads: int, low: float, high: float) -> tuple[int, ...]:
        """The FFN widths landing in [low, high] with ``layers`` layers of ``heads`` heads (counts rise with width)."""
        first = bisect.bisect_left(self.channels, low, key=lambda c: self.count(layers, heads, c))
        end = bisect.bisect_right(self.channels, high, key=lambda c: self.count(layers, heads, c))
        return self.channels[first:end]

    def sizes(self) -> list[int]:
        """Every parameter count a standard architecture has, ascending."""
        shape = self.shape
        per_layer = {shape.attention_params(h) + shape.mlp_params(c) for h in self.heads for c in self.channels}
        return sorted({shape.fixed + layers * size for layers in self.depths for size in per_layer})


def repair_standard(
    shape: ModelShape,
    proposal: Proposal,
    param_ratio: float,
    *,
    ffn_alignment: int,
    depth: str = "layer",
    width: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ArchConfig:
    """The standard architecture nearest ``proposal`` within ``tolerance`` of the budget.

    Any proposal is read as a standard one: the layers it keeps (any sub-block > 0) and the mean
    attention and MLP fractions over them. Repair keeps that many layers if the budget allows (else
    the nearest count that does, dropping or reviving by ``proposal.keep``), and picks the head count
    and FFN width on the budget nearest the proposal's attention:MLP direction. With ``width=False``
    every kept layer keeps all heads: the fewest layers are dropped and the FFN is trimmed to land.
    """
    layers_n = shape.num_layers
    if len(proposal.attention) != layers_n or len(proposal.mlp) != layers_n:
        raise BudgetInfeasible(f"proposal has {len(proposal.attention)} layers, model has {layers_n}")
    if proposal.sparsity and max(proposal.sparsity) > 0:
        raise BudgetInfeasible("the standard format has no unstructured sparsity")
    grid = _Grid.of(shape, ffn_alignment=ffn_alignment, depth=depth, width=width)
    attention = [_clip(x) for x in proposal.attention]
    mlp = [_clip(x) for x in proposal.mlp]
    keep = proposal.keep or tuple(a + m for a, m in zip(attention, mlp, strict=True))
    if len(keep) != layers_n:
        raise BudgetInfeasible(f"proposal ranks {len(keep)} layers, model has {layers_n}")
    wanted = [i for i in range(layers_n) if attention[i] or mlp[i]]
    budget = param_ratio * shape.dense_params()
    low, high = budget * (1 - tolerance), budget * (1 + tolerance)
    if width:
        direction = (_mean(attention, wanted), _mean(mlp, wanted))
        kept_n = len(wanted) or layers_n
    else:
        direction = (0.0, 1.0)  # the widest FFN that lands
        full = (shape.num_heads, shape.intermediate_size)
        kept_n = min((n for n in grid.depths if grid.count(n, *full) >= low), default=layers_n)
    kept_n, heads, channels = _nearest(grid, kept_n, direction, low, high)
    kept = set(layer_order(keep)[:kept_n])
    arch = ArchConfig(tuple(LayerArch(heads, channels) if i in kept else LayerArch(0, 0) for i in range(layers_n)))
    shape.validate(arch)
    return arch


def _nearest(grid: _Grid, kept_n: int, direction: tuple[float, float], low: float, high: float) -> tuple[int, int, int]:
    """(layers, heads, FFN width) on the budget: the layer count nearest ``kept_n`` (ties: more
    layers), then the (heads, width) nearest the ray of ``direction`` in (head fraction, FFN fraction)."""
    a, m = direction if any(direction) else (1.0, 1.0)
    heads_n, full = grid.shape.num_heads, grid.shape.intermediate_size
    norm = math.hypot(a, m)
    for layers in sorted(grid.depths, key=lambda n: (abs(n - kept_n), -n)):
        best: tuple[float, int, int] | None = None
        for heads in grid.heads:
            widths = grid.widths(layers, heads, low, high)
            if not widths:
                continue
            x = heads / heads_n
            target = full * x * m / a if a > 0 else math.inf  # the width on the ray at this head count
            i = bisect.bisect_left(widths, target)
            channels = min(widths[max(i - 1, 0) : i + 1], key=lambda c: (abs(c - target), -c))
            distance = abs(x * m - channels / full * a) / norm
            if best is None or distance <= best[0]:  # ties: more heads
                best = (distance, heads, channels)
        if best is not None:
            return layers, best[1], best[2]
    raise BudgetInfeasible(f"no standard architecture has {low:.0f}..{high:.0f} parameters")


def check_standard_budget(
    shape: ModelShape,
    lowest: float,
    highest: float,
    *,
    ffn_alignment: int,
    depth: str,
    width: bool,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Refuse if some budget in [lowest, highest] (fractions of all parameters) has no standard
    architecture within ``tolerance``: a budget r is met by a size x when x/(1+t) ≤ r·dense ≤ x/(1-t)."""
    dense = shape.dense_params()
    sizes = _Grid.of(shape, ffn_alignment=ffn_alignment, depth=depth, width=width).sizes()
    uncovered = lowest
    for size in sizes:
        if size / (1 + tolerance) > uncovered * dense:
            break
        if size / (1 - tolerance) >= uncovered * dense:
            if size / (1 - tolerance) >= highest * dense:
                return
            uncovered = size / (1 - tolerance) / dense
    below = max((s / dense for s in sizes if s / dense < uncovered), default=None)
    above = min((s / dense for s in sizes if s / dense > uncovered), default=None)
    nearest = " and ".join(f"{r:.3f}" for r in (below, above) if r is not None)
    raise BudgetInfeasible(
        f"param_ratio {uncovered:.3f} cannot be reached in the standard format on this model (whole layers "
        f"dropped, one head count and one FFN width for all): the nearest standard sizes keep {nearest} of "
        "all parameters; choose a budget near one of them, a smaller search_space.ffn_alignment, or "
        "search_space.export_format 'per_layer'"
    )


def _mean(values: Sequence[float], indices: Sequence[int]) -> float:
    return sum(values[i] for i in indices) / len(indices) if indices else 1.0


def _clip(value: float) -> float:
    return 0.0 if math.isnan(value) else min(max(value, 0.0), 1.0)
