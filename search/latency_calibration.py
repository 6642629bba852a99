"""Calibrating the latency table against whole models: what the sum of its parts misses.

Sub-blocks are timed in short stacks (``search.latency``); a whole model adds what those cannot show
in the same proportion: the host's fixed cost per kept layer (its call, norms, residual adds, the
dropped sub-blocks' stubs, the KV cache's bookkeeping), and on a CPU the weights of a deep model no
longer staying in cache. So at table build a few models of the family at full or part depth are
built as an export would be (random weights, ``build_skeleton``) and timed, and the additive model

    measured ≈ base + kept_layers × layer + scale × Σ_kept sub-blocks(heads, channels)

is fitted to them by least squares on relative errors (base ≥ 0, layer ≥ 0, scale within
``SCALE_RANGE``, so the table stays monotone). The dense model is one of them where the device has
room for a second copy (it is the denominator of every latency ratio, and on a CPU the one whose
weights least fit in cache); the others hold at most about half its parameters. The fit's median
relative residual over them is kept with the table and reported.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from search.adapters import Adapter
from search.arch import ArchConfig, LayerArch, ModelShape
from search.export import build_skeleton, export_config
from search.latency_timing import step_ms
from search.spec import LatencySetting

SCALE_RANGE = (0.5, 2.0)  # the sub-blocks' stack timings are off by at most this factor in a whole model
HEADROOM = 0.8  # a calibration model is built where it takes at most this share of the device's free memory


@dataclass(frozen=True)
class Point:
    """One calibration model: its kept layers, the table's sum of its sub-blocks (unscaled), its step."""

    name: str
    kept_layers: int
    subblocks_ms: float
    measured_ms: float


@dataclass(frozen=True)
class Fit:
    base_ms: float
    layer_ms: float
    scale: float
    points: tuple[Point, ...]

    def predict_ms(self, point: Point) -> float:
        return self.base_ms + point.kept_layers * self.layer_ms + self.scale * point.subblocks_ms

    @property
    def error(self) -> float | None:
        """Median |predicted / measured − 1| over the calibration models."""
        if not self.points:
            return None
        return statistics.median(abs(self.predict_ms(p) / p.measured_ms - 1) for p in self.points)


def calibration_archs(shape: ModelShape, alignment: int) -> dict[str, ArchConfig]:
    """Models that tell base, per-layer cost and sub-block scale apart: dense at full, half and quarter
    depth (base against layers), and at full depth half as wide, attention and MLP in alternate
    layers, and as narrow as the grid allows (layers against sub-blocks). Each but the dense one holds
    at most about half the dense model's layer parameters."""
    n, heads, channels, group = shape.num_layers, shape.num_heads, shape.intermediate_size, shape.group_size
    half_heads = max(group, heads // 2 // group * group)
    half_channels = max(alignment, channels // 2 // alignment * alignment)
    dense, empty = LayerArch(heads, channels), LayerArch(0, 0)

    def depth(kept: int) -> ArchConfig:
        return ArchConfig((dense,) * kept + (empty,) * (n - kept))

    alternate = (LayerArch(heads, 0), LayerArch(0, channels))
    return {
        "dense": depth(n),
        "half depth": depth(max(1, n // 2)),
        "quarter depth": depth(max(1, n // 4)),
        "half width": ArchConfig((LayerArch(half_heads, half_channels),) * n),
        "alternating": ArchConfig(tuple(alternate[i % 2] for i in range(n))),
        "narrowest": ArchConfig((LayerArch(group, min(alignment, channels)),) * n),
    }


def measure(
    adapter: Adapter,
    setting: LatencySetting,
    dtype: torch.dtype,
    subblocks_ms: Callable[[Sequence[LayerArch]], float],
    archs: dict[str, ArchConfig],
    *,
    warmup: int,
    repeats: int,
    min_seconds: float,
) -> list[Point]:
    """Each model built as its export would be, on the adapter's device, and timed; one the device
    has no room for is left out."""
    points = []
    for name, arch in archs.items():
        if not _room_for(adapter, arch, dtype):
            continue
        _, config = export_config(adapter, arch)
        model = build_skeleton(config, device=adapter.device, dtype=dtype)
        measured = step_ms(
            model, setting, causal=adapter.shape.causal, warmup=warmup, repeats=repeats, min_seconds=min_seconds
        )
        del model
        if adapter.device.type == "cuda":
            torch.cuda.empty_cache()
        kept = [layer for layer in arch.layers if layer.attention_kept or layer.mlp_kept]
        points.append(Point(name, len(kept), subblocks_ms(kept), measured))
    return points


def _room_for(adapter: Adapter, arch: ArchConfig, dtype: torch.dtype) -> bool:
    """Whether the model's weights take at most ``HEADROOM`` of the GPU's free memory (a CPU: always)."""
    device = adapter.device
    if device.type != "cuda":
        return True
    weights = adapter.shape.count_params(arch) * torch.tensor([], dtype=dtype).element_size()
    return weights <= HEADROOM * torch.cuda.mem_get_info(device)[0]


def fit(points: Sequence[Point], *, measured_layer_ms: float) -> Fit:
    """The least-squares (base, layer, scale) within their bounds, on relative errors.

    A bounded linear least squares of three unknowns: the optimum lies on one face of the box, so every
    combination of each unknown free or at one of its bounds is solved and the best feasible one kept.
    With every model at one depth, base and layer cannot be told apart: layer keeps its measured value."""
    points = tuple(points)
    one_depth = len({p.kept_layers for p in points}) < 2
    bounds: tuple[tuple[float | None, ...], ...] = (
        (None, 0.0),  # base: free, or 0
        (measured_layer_ms,) if one_depth else (None, 0.0),
        (None, *SCALE_RANGE),
    )
    best: Fit | None = None
    best_loss = float("inf")
    for fixed in itertools.product(*bounds):
        values = _solve(points, fixed)
        if values is None or not _feasible(values):
            continue
        candidate = Fit(*values, points=points)
        loss = sum((candidate.predict_ms(p) / p.measured_ms - 1) ** 2 for p in points)
        if loss < best_loss - 1e-12:
            best, best_loss = candidate, loss
    assert best is not None  # base 0, layer fixed or 0, scale at a bound is always feasible
    return best


def _feasible(values: tuple[float, float, float]) -> bool:
    base, layer, scale = values
    low, high = SCALE_RANGE
    return base >= 0 and layer >= 0 and low - 1e-9 <= scale <= high + 1e-9


def _solve(points: tuple[Point, ...], fixed: tuple[float | None, ...]) -> tuple[float, float, float] | None:
    """Least squares of the unknowns that ``fixed`` leaves free (None), the others at their value."""
    rows = torch.tensor([[1.0, p.kept_layers, p.subblocks_ms] for p in points], dtype=torch.float64) / torch.tensor(
        [[p.measured_ms] for p in points], dtype=torch.float64
    )  # relative: each row over its step
    target = torch.ones(len(points), dtype=torch.float64)
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
    return values[0], values[1], values[2]


__all__ = ["Fit", "Point", "calibration_archs", "fit", "measure"]
