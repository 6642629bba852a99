"""Calibrating the latency table against whole models: what the sum of its parts misses.

Sub-blocks are timed in short stacks (``search.latency``); a whole model adds what those cannot show
in the same proportion: a kept layer's fixed cost (its call, norms, residual adds, the dropped
sub-blocks' stubs, the KV cache's bookkeeping), and on a CPU the weights of a deep model no longer
staying in cache. Nor need a whole model pay for width as a stack does: where a step is bound by the
host's launches (a CPU; a GPU timed eagerly, as this table once was), what a wider attention costs
hides behind the host's next launches in a deep model and shows in a short stack (on an H200, timed
eagerly: the stacks' 4-head attention 0.41 ms against 0.56 ms at 32 heads, while whole 8B models at
the narrowest widths stepped as long as the dense one). So at table build a few models of the family
at full or part depth and width are built as an export would be (random weights, ``build_skeleton``)
and timed, and the additive model

    measured ≈ base + kept_layers × layer + scale × Σ_kept floor + width_scale × Σ_kept width

is fitted to them on relative errors, where a sub-block's *floor* is its stack timing at the
narrowest width the grid allows and its *width* is what its own width adds to that (base ≥ 0, layer
≥ 0, scale within ``SCALE_RANGE``, width_scale within [0, its upper end]: the table stays monotone).
On an H200, with steps replayed as graphs, both scales come out 0.97-1.10 on the 1B and 8B shapes
(docs/performance.md): there the stacks alone are nearly the whole story. The fit minimises the sum
of absolute relative errors, not of their squares: on a shared machine one model of a table can be
timed in a slow second (one came out 30% slow on an H200 host, timed eagerly), and least squares let
such a point pull the base to 3.4 ms where every other model said 0.7 ms. The dense model is one of
them where the device has room for a second copy (it is the denominator of every latency ratio, and
on a CPU the one whose weights least fit in cache); the others hold at most about half its
parameters. The fit's median relative residual over them is kept with the table and reported.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from search.adapters import Adapter
from search.arch import ArchConfig, LayerArch, ModelShape
from search.export import build_skeleton, export_config
from search.latency_timing import kept_timer, least_of_passes, room_for, step_ms
from search.spec import LatencySetting

SCALE_RANGE = (0.5, 2.0)  # the sub-blocks' stack timings are off by at most this factor in a whole model
FIT_ROUNDS = 50  # reweighted least-squares rounds of the least-absolute-errors fit (9 models: converged in ~20)
FIT_FLOOR = 1e-4  # a residual below this weighs as this much: a model fitted exactly does not take all weight
PASSES = 3  # each calibration model is timed this many times, seconds apart


@dataclass(frozen=True)
class Point:
    """One calibration model: its kept layers, its sub-blocks' stack timings summed (unscaled) as their
    floor at the narrowest widths and what their widths add, and its measured step."""

    name: str
    kept_layers: int
    floor_ms: float
    width_ms: float
    measured_ms: float


@dataclass(frozen=True)
class Fit:
    base_ms: float
    layer_ms: float
    scale: float
    width_scale: float
    points: tuple[Point, ...]

    def predict_ms(self, point: Point) -> float:
        return (
            self.base_ms
            + point.kept_layers * self.layer_ms
            + self.scale * point.floor_ms
            + self.width_scale * point.width_ms
        )

    @property
    def error(self) -> float | None:
        """Median |predicted / measured − 1| over the calibration models."""
        if not self.points:
            return None
        return statistics.median(abs(self.predict_ms(p) / p.measured_ms - 1) for p in self.points)


def calibration_archs(shape: ModelShape, alignment: int) -> dict[str, ArchConfig]:
    """Models that tell base, per-layer cost and sub-block scale apart, each told by more than one
    model (the fit leaves out one that disagrees with the rest, so no figure may rest on one model):
    dense at full, half, quarter and eighth depth, two layers and one (base against layers; the
    shallow ones pin the base, which is most of what a candidate at a tight latency budget costs);
    attention and MLP in alternate layers, attention alone in every layer, the MLP alone in half the
    layers (layers against sub-blocks); half as wide and as narrow as the grid allows, at full depth
    (width). Each but the dense one holds at most about half the dense model's layer parameters; a
    model another name already has is not built twice."""
    n, heads, channels, group = shape.num_layers, shape.num_heads, shape.intermediate_size, shape.group_size
    half_heads = max(group, heads // 2 // group * group)
    half_channels = max(alignment, channels // 2 // alignment * alignment)
    dense, empty = LayerArch(heads, channels), LayerArch(0, 0)

    def depth(kept: int) -> ArchConfig:
        return ArchConfig((dense,) * kept + (empty,) * (n - kept))

    alternate = (LayerArch(heads, 0), LayerArch(0, channels))
    half = max(1, n // 2)
    candidates = {
        "dense": depth(n),
        "half depth": depth(half),
        "quarter depth": depth(max(1, n // 4)),
        "eighth depth": depth(max(1, n // 8)),
        "two layers": depth(min(2, n)),
        "one layer": depth(1),
        "alternating": ArchConfig(tuple(alternate[i % 2] for i in range(n))),
        "attention only": ArchConfig((LayerArch(heads, 0),) * n),
        "MLP only": ArchConfig((LayerArch(0, channels),) * half + (empty,) * (n - half)),
        "half width": ArchConfig((LayerArch(half_heads, half_channels),) * n),
        "narrowest": ArchConfig((LayerArch(group, min(alignment, channels)),) * n),
    }
    archs: dict[str, ArchConfig] = {}
    for name, arch in candidates.items():
        if arch not in archs.values():
            archs[name] = arch
    return archs


def measure(
    adapter: Adapter,
    setting: LatencySetting,
    dtype: torch.dtype,
    split_ms: Callable[[Sequence[LayerArch]], tuple[float, float]],
    archs: dict[str, ArchConfig],
    *,
    warmup: int,
    repeats: int,
    min_seconds: float,
    passes: int,
) -> list[Point]:
    """Each model built as its export would be, on the adapter's device, and timed in ``passes``
    passes over all of them (the order reversed every pass); its step is the least of its passes'
    medians. A host-bound step (a CPU's) runs up to twice as long for seconds at a time on a shared
    host, and a pass seconds later finds the host back at speed.
    A model the device has no room for is left out; between passes a model stays on the GPU while
    there is room for the largest one besides it, and is built again otherwise."""
    names = [name for name, arch in archs.items() if room_for(adapter.device, adapter.shape.count_params(arch), dtype)]
    largest = max((adapter.shape.count_params(archs[name]) for name in names), default=0)

    def time_ms(model: nn.Module) -> float:
        return step_ms(
            model, setting, causal=adapter.shape.causal, warmup=warmup, repeats=repeats, min_seconds=min_seconds
        )

    def keep() -> bool:
        return adapter.device.type == "cuda" and room_for(adapter.device, 2 * largest, dtype)

    def build(arch: ArchConfig) -> Callable[[], nn.Module]:
        return lambda: build_skeleton(export_config(adapter, arch)[1], device=adapter.device, dtype=dtype)

    timers = {name: kept_timer(build(archs[name]), time_ms, passes=passes, keep=keep) for name in names}
    steps = least_of_passes(timers, passes)
    points = []
    for name in names:
        kept = [layer for layer in archs[name].layers if layer.attention_kept or layer.mlp_kept]
        points.append(Point(name, len(kept), *split_ms(kept), steps[name]))
    return points


def fit(points: Sequence[Point], *, measured_layer_ms: float) -> Fit:
    """The (base, layer, scale, width scale) within their bounds with the least sum of absolute relative errors:
    least squares reweighted by each model's last residual until the weights settle (each round a
    bounded least squares, ``_bounded``). With every model at one depth, base and layer cannot be
    told apart: layer keeps its measured value."""
    points = tuple(points)
    one_depth = len({p.kept_layers for p in points}) < 2
    bounds: tuple[tuple[float | None, ...], ...] = (
        (None, 0.0),  # base: free, or 0
        (measured_layer_ms,) if one_depth else (None, 0.0),
        (None, *SCALE_RANGE),
        (None, 0.0, SCALE_RANGE[1]),  # width: free, nothing, or as dear as the most a sub-block may be
    )
    weights = [1.0] * len(points)
    best = _bounded(points, bounds, weights)
    for _ in range(FIT_ROUNDS):
        weights = [1 / max(abs(best.predict_ms(p) / p.measured_ms - 1), FIT_FLOOR) for p in points]
        candidate = _bounded(points, bounds, weights)
        if _absolute_loss(candidate) >= _absolute_loss(best) - 1e-12:
            break
        best = candidate
    return best


def _absolute_loss(candidate: Fit) -> float:
    return sum(abs(candidate.predict_ms(p) / p.measured_ms - 1) for p in candidate.points)


def _bounded(points: tuple[Point, ...], bounds: tuple[tuple[float | None, ...], ...], weights: list[float]) -> Fit:
    """The weighted least-squares (base, layer, scale, width scale) within their bounds, on relative errors.

    A bounded linear least squares of four unknowns: the optimum lies on one face of the box, so every
    combination of each unknown free or at one of its bounds is solved and the best feasible one kept."""
    best: Fit | None = None
    best_loss = float("inf")
    for fixed in itertools.product(*bounds):
        values = _solve(points, fixed, weights)
        if values is None or not _feasible(values):
            continue
        candidate = Fit(*values, points=points)
        loss = sum(w * (candidate.predict_ms(p) / p.measured_ms - 1) ** 2 for w, p in zip(weights, points, strict=True))
        if loss < best_loss - 1e-12:
            best, best_loss = candidate, loss
    assert best is not None  # base 0, layer fixed or 0, both scales at a bound is always feasible
    return best


def _feasible(values: tuple[float, float, float, float]) -> bool:
    base, layer, scale, width_scale = values
    low, high = SCALE_RANGE
    return base >= 0 and layer >= 0 and low - 1e-9 <= scale <= high + 1e-9 and -1e-9 <= width_scale <= high + 1e-9


def _solve(
    points: tuple[Point, ...], fixed: tuple[float | None, ...], weights: list[float]
) -> tuple[float, float, float, float] | None:
    """Weighted least squares of the unknowns that ``fixed`` leaves free (None), the others at their value."""
    root = torch.tensor(weights, dtype=torch.float64).sqrt()
    steps = torch.tensor([p.measured_ms for p in points], dtype=torch.float64)
    # Relative: each row over its step (a residual is predicted / measured − 1), times the root of its weight.
    rows = torch.tensor([[1.0, p.kept_layers, p.floor_ms, p.width_ms] for p in points], dtype=torch.float64)
    rows = rows * (root / steps).unsqueeze(1)
    target = root
    free = [i for i, value in enumerate(fixed) if value is None]
    for i, value in enumerate(fixed):
        if value is not None:
            target = target - rows[:, i] * value
    values = [value if value is not None else 0.0 for value in fixed]
    if free:
        if len(points) < len(free):
            return None
        solution = torch.linalg.lstsq(rows[:, free], target.unsqueeze(1)).solution.squeeze(1)
        if not torch.isfinite(solution).all():
            return None
        for i, value in zip(free, solution.tolist(), strict=True):
            values[i] = value
    return values[0], values[1], values[2], values[3]


__all__ = ["Fit", "Point", "calibration_archs", "fit", "measure"]
