"""A measured latency model: what one step of a candidate costs on the worker's own device.

Once per (model, device, precision, setting, FFN alignment) the worker times models of the model's
own family (``search.export.build_skeleton``, random weights): a first layer of full attention (the
anchor), then a stack of ``STACK`` layers all at one width the search can choose: only attention at k
KV groups, only an MLP at c channels, or nothing. A sub-block's cost is its stack's time less the
empty stack's, over the stack's depth (a stack, not one layer, so the difference stands well above
the noise of a step); a kept layer's fixed cost is the empty stack's time less the anchor's alone,
over the depth. A candidate's predicted latency is

    base + Σ_kept layers (layer + attention(heads) + mlp(channels)),
    attention(heads) = scale × stack(narrowest) + width_scale × (stack(heads) − stack(narrowest))

(and the MLP's likewise), where a layer that keeps nothing is left out (as an export leaves it out),
and a dropped sub-block costs nothing beyond its layer's fixed cost (its stub is in that). ``base``
(embeddings, final norm, LM head, what a forward does once), ``layer`` and the two scales are then
fitted to a few whole models timed the same way (``search.latency_calibration``): a short stack
shows the host's per-layer work, what width costs and the cache's behaviour of a deep model in a
different proportion. (The two-layer table this replaces, with a running maximum over its widths and
no per-layer cost, was 25-27% off the exported models' measured steps on an H200.) The table lives
in the model's artifact store (``LATENCY_TABLE``), so a later job on the same GPU type reads it
instead of timing again, and a prediction is a few dictionary lookups (microseconds).

Two rules keep predictions usable by repair's bisection and honest about hardware:
- monotone: a sub-block's cost never falls as it keeps more (an isotonic fit over the widths, which
  averages timing noise out rather than ratcheting up to its highest draw as a running maximum did);
- aligned: widths are timed on the job's FFN alignment grid, and a width between two grid points
  costs what the next grid point costs, so an odd width is never predicted faster than its aligned
  neighbour. Where an alignment is not given, ``device_alignment`` picks it (see there).

Unstructured sparsity is ignored: zeros in dense tensors save no time.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from search import latency_calibration as calibration
from search.adapters import Adapter
from search.arch import ArchConfig, LayerArch
from search.artifacts import Artifact
from search.errors import BudgetInfeasible
from search.export import build_skeleton, layers_config
from search.latency_timing import Stepper, interleaved_ms
from search.precision import dtype_name
from search.spec import JobSpec, LatencySetting

# 2: stacks, a kept layer's fixed cost, the fit (base, layer, scale); 3: a width scale; 4: GPU steps as replayed graphs
TABLE_VERSION = 4
TIE_MS = 1e-6  # a nanosecond: the least one more width costs in the table
MAX_MLP_POINTS = 9  # MLP widths timed per table; the grid points between are interpolated
STACK = 4  # layers of one width per timed model (at most the model's depth less the anchor)
TABLE_WARMUP = 2
TABLE_REPEATS = 5
TABLE_SECONDS = 0.1  # each comparison of the table runs its steps for at least this long
CALIBRATION_SECONDS = 0.2  # each calibration model likewise
# A stored table is timed again where its probe calibration model now steps this many times as long
# or as short: a GPU's replayed steps stay within a few percent, a CPU's move with the machine's load.
DRIFT = 1.5
PROBE = "quarter depth"

log = logging.getLogger(__name__)
# 16-bit tensor-core tiles on NVIDIA GPUs (Ampere's mma and Hopper's wgmma) are 64 or 128 channels wide:
# an MLP whose width is not a multiple runs partly empty tiles (benchmarks/latency.py measures it).
GPU_ALIGNMENTS = (128, 64, 32)
CPU_ALIGNMENT = 32  # the search space's default; a CPU's vector units show no step at coarser widths


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds per step of each sub-block at each width, on one device, precision and setting."""

    setting: LatencySetting
    device: str  # the device's name, e.g. "NVIDIA H200" or "cpu"
    dtype: str
    alignment: int  # FFN channels are timed on multiples of this
    intermediate_size: int
    base_ms: float  # embeddings, final norm, LM head, what a forward does once
    attention_ms: dict[int, float]  # kept query heads (whole KV groups, 0 included) → ms, as timed in stacks
    mlp_points: dict[int, float]  # timed FFN widths (0 included) → ms, as timed in stacks
    build_seconds: float
    layer_ms: float = 0.0  # a kept layer's fixed cost: its call, norms, residual adds, a dropped sub-block's stub
    scale: float = 1.0  # what a sub-block's stack timing at the narrowest width is multiplied by in a whole model
    width_scale: float = 1.0  # and what its width adds to that (both the fit's)
    calibration: tuple[calibration.Point, ...] = ()  # the whole models the fit is of
    stack_base_ms: float | None = None  # base and layer as the stacks alone gave them (before the fit)
    stack_layer_ms: float | None = None
    source: str = "measured"  # by this process; "stored": read from the artifact store; "re-timed": stored, drifted
    _mlp_grid: dict[int, float] = field(default_factory=dict, repr=False, compare=False)
    _narrowest_heads: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every width on the alignment grid, interpolated between the timed ones (linear, so still monotone).
        widths = sorted(self.mlp_points)
        grid = {
            width: _interpolate(widths, self.mlp_points, width)
            for width in _grid(self.intermediate_size, self.alignment)
        }
        object.__setattr__(self, "_mlp_grid", grid)
        object.__setattr__(self, "_narrowest_heads", min(h for h in self.attention_ms if h))

    def attention(self, heads: int) -> float:
        return self._scaled(*self._attention_split(heads))

    def mlp(self, channels: int) -> float:
        return self._scaled(*self._mlp_split(channels))

    def _scaled(self, floor_ms: float, width_ms: float) -> float:
        return self.scale * floor_ms + self.width_scale * width_ms

    def _attention_split(self, heads: int) -> tuple[float, float]:
        """The stack timing of ``heads`` as the narrowest attention's and what the width adds (0: dropped)."""
        if not heads:
            return 0.0, 0.0
        floor = self.attention_ms[self._narrowest_heads]
        return floor, self.attention_ms[heads] - floor

    def _mlp_split(self, channels: int) -> tuple[float, float]:
        if not channels:
            return 0.0, 0.0
        floor = self._mlp_timed(1)  # the grid's narrowest width
        return floor, self._mlp_timed(channels) - floor

    def _mlp_timed(self, channels: int) -> float:
        if not channels:
            return 0.0
        aligned = min(-(-channels // self.alignment) * self.alignment, self.intermediate_size)
        return self._mlp_grid[aligned]

    def predict_ms(self, layers: Sequence[LayerArch]) -> float:
        """Predicted milliseconds of one step of a model with these layers."""
        return self.base_ms + sum(
            self.layer_ms + self.attention(layer.heads) + self.mlp(layer.ffn_channels)
            for layer in layers
            if layer.heads or layer.ffn_channels
        )

    def split_ms(self, layers: Sequence[LayerArch]) -> tuple[float, float]:
        """The sub-blocks' stack timings summed, unscaled, as what they cost at the narrowest widths and
        what their widths add (what the calibration fits the two scales of)."""
        parts = [self._attention_split(layer.heads) for layer in layers]
        parts += [self._mlp_split(layer.ffn_channels) for layer in layers]
        return sum(floor for floor, _ in parts), sum(width for _, width in parts)

    def uncalibrated(self) -> LatencyTable:
        """The table as the stacks alone gave it (no fit): what the calibration is measured against."""
        if self.stack_base_ms is None or self.stack_layer_ms is None:
            return self
        return dataclasses.replace(
            self, base_ms=self.stack_base_ms, layer_ms=self.stack_layer_ms, scale=1.0, width_scale=1.0, calibration=()
        )

    def with_fit(self, fit: calibration.Fit) -> LatencyTable:
        """The table with the calibration's figures and the whole models they were fitted to."""
        return dataclasses.replace(
            self,
            base_ms=fit.base_ms,
            layer_ms=fit.layer_ms,
            scale=fit.scale,
            width_scale=fit.width_scale,
            calibration=fit.points,
        )

    @property
    def fit(self) -> calibration.Fit:
        """The table's calibration: its figures and the whole models they were fitted to."""
        return calibration.Fit(self.base_ms, self.layer_ms, self.scale, self.width_scale, self.calibration)

    @property
    def calibration_error(self) -> float | None:
        """Median |predicted / measured − 1| over the calibration models (None: not calibrated)."""
        return self.fit.error


def _grid(full: int, alignment: int) -> list[int]:
    """FFN widths the search can keep: multiples of the alignment, and the full width."""
    return sorted({*range(alignment, full + 1, alignment), full})


def _timed_widths(full: int, alignment: int, most: int) -> list[int]:
    """Up to ``most`` widths of the alignment grid, evenly spread, the smallest and the full one included."""
    grid = _grid(full, alignment)
    step = max(1, -(-len(grid) // max(2, most)))
    return sorted({*grid[::step], grid[-1]})


def _interpolate(widths: list[int], points: dict[int, float], width: int) -> float:
    index = bisect.bisect_left(widths, width)
    if widths[index] == width:
        return points[width]
    low, high = widths[index - 1], widths[index]
    share = (width - low) / (high - low)
    return points[low] + share * (points[high] - points[low])


def _monotone(values: dict[int, float]) -> dict[int, float]:
    """Increasing in the width, 0 at width 0: the isotonic (least-squares non-decreasing) fit of the
    timed costs, so noise that made one width look dearer or cheaper is pooled with its neighbours
    rather than carried up to every wider one; then each width at least ``TIE_MS`` above the narrower
    one (what noise hid still costs something, so a table of a fast device or a noisy machine still
    ranks widths)."""
    widths = sorted(w for w in values if w)
    fitted = _isotonic([values[w] for w in widths])
    result, highest = {0: 0.0}, 0.0
    for width, value in zip(widths, fitted, strict=True):
        highest = max(highest + TIE_MS, value)
        result[width] = highest
    return result


def _isotonic(values: list[float]) -> list[float]:
    """Pool adjacent violators: the non-decreasing sequence nearest ``values`` in squares."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            previous = blocks[-1]
            previous[0] = (previous[0] * previous[1] + mean * count) / (previous[1] + count)
            previous[1] += count
    return [mean for mean, count in blocks for _ in range(int(count))]


def _encode(table: LatencyTable) -> dict[str, Any]:
    return {
        "version": TABLE_VERSION,
        "setting": table.setting.model_dump(),
        "device": table.device,
        "dtype": table.dtype,
        "alignment": table.alignment,
        "intermediate_size": table.intermediate_size,
        "base_ms": table.base_ms,
        "attention": [[heads, ms] for heads, ms in sorted(table.attention_ms.items())],
        "mlp": [[width, ms] for width, ms in sorted(table.mlp_points.items())],
        "build_seconds": table.build_seconds,
        "layer_ms": table.layer_ms,
        "scale": table.scale,
        "width_scale": table.width_scale,
        "calibration": [dataclasses.asdict(point) for point in table.calibration],
        "stack_base_ms": table.stack_base_ms,
        "stack_layer_ms": table.stack_layer_ms,
    }


def _decode(payload: dict[str, Any]) -> LatencyTable:
    if payload.get("version") != TABLE_VERSION:
        raise ValueError(f"latency table version {payload.get('version')}")
    return LatencyTable(
        setting=LatencySetting.model_validate(payload["setting"]),
        device=str(payload["device"]),
        dtype=str(payload["dtype"]),
        alignment=int(payload["alignment"]),
        intermediate_size=int(payload["intermediate_size"]),
        base_ms=float(payload["base_ms"]),
        attention_ms={int(h): float(ms) for h, ms in payload["attention"]},
        mlp_points={int(c): float(ms) for c, ms in payload["mlp"]},
        build_seconds=float(payload["build_seconds"]),
        layer_ms=float(payload["layer_ms"]),
        scale=float(payload["scale"]),
        width_scale=float(payload["width_scale"]),
        calibration=tuple(calibration.Point(**point) for point in payload["calibration"]),
        stack_base_ms=payload["stack_base_ms"],
        stack_layer_ms=payload["stack_layer_ms"],
        source="stored",
    )


# (device name, dtype, phase, batch, context, alignment) → the table; kept on disk beside the model.
TableKey = tuple[str, str, str, int, int, int]
LATENCY_TABLE: Artifact[TableKey, LatencyTable] = Artifact(
    "latency-table",
    file=lambda key: "latency-" + "-".join(str(part).replace(" ", "_").replace("/", "_") for part in key),
    encode=_encode,
    decode=_decode,
)


def device_name(device: torch.device) -> str:
    """The GPU's model (two workers with the same GPU share a table), or "cpu"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def device_alignment(device: torch.device, dtype: torch.dtype, intermediate_size: int) -> tuple[int, ...]:
    """FFN alignments to try, best first: on a GPU in 16-bit, multiples of 128 channels, then 64
    (tensor-core tile widths), then 32; elsewhere the search space's default, 32. The first that
    the budget check accepts is used (a tiny model may need a finer grid)."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return tuple(a for a in GPU_ALIGNMENTS if a <= intermediate_size) or (CPU_ALIGNMENT,)
    return (CPU_ALIGNMENT,)


# --- the table -----------------------------------------------------------------------------------


def build_table(
    adapter: Adapter,
    setting: LatencySetting,
    *,
    dtype: torch.dtype,
    alignment: int,
    max_mlp_points: int = MAX_MLP_POINTS,
    warmup: int = TABLE_WARMUP,
    repeats: int = TABLE_REPEATS,
    min_seconds: float | None = None,
    calibrate: bool = True,
) -> LatencyTable:
    """Time stacks of ``adapter``'s family (module docstring) at every attention width and up to
    ``max_mlp_points`` FFN widths of the alignment grid (evenly spread, the smallest and the full
    width included), on the adapter's device in ``dtype``; then fit base, layer and scale to whole
    models (``calibrate``; without it they are the stacks' own figures and the scale 1). Each
    comparison runs for at least ``min_seconds`` (default ``TABLE_SECONDS``)."""
    started = time.perf_counter()
    alignment = max(1, min(alignment, adapter.shape.intermediate_size))
    seconds = TABLE_SECONDS if min_seconds is None else min_seconds

    def timed(*steppers: Stepper) -> list[float]:
        return interleaved_ms(list(steppers), warmup=warmup, repeats=repeats, min_seconds=seconds)

    table = _stacks_table(adapter, setting, dtype, alignment, max_mlp_points, timed)
    if calibrate:
        archs = calibration.calibration_archs(adapter.shape, alignment)
        points = calibration.measure(
            adapter, setting, dtype, table.split_ms, archs,
            warmup=warmup, repeats=repeats, min_seconds=CALIBRATION_SECONDS, passes=calibration.PASSES,
        )  # fmt: skip
        if points:  # none where the device has no room for even a quarter of the model: the stacks' figures
            table = table.with_fit(calibration.fit(points, measured_layer_ms=table.layer_ms))
    return dataclasses.replace(table, build_seconds=time.perf_counter() - started)


def _stacks_table(
    adapter: Adapter,
    setting: LatencySetting,
    dtype: torch.dtype,
    alignment: int,
    max_mlp_points: int,
    timed: Callable[..., list[float]],
) -> LatencyTable:
    """The table as the stacks give it: each width's stack beside the empty one, the empty one beside
    the anchor alone (a kept layer's fixed cost), and the anchor's remainder (the base)."""
    shape = adapter.shape
    depth = max(1, min(STACK, shape.num_layers - 1))
    stack = _stack_steppers(adapter, setting, dtype, depth)
    empty, anchor = stack(0, 0), stack(0, 0, depth=0)
    # Untimed first: a process's first steps may pay one-off costs (lazy initialisation, a GPU's library
    # handles and kernel loading) that would make the first widths look dear.
    timed(anchor, empty)
    anchor_ms, empty_ms = timed(anchor, empty)
    layer = max(empty_ms - anchor_ms, 0.0) / depth

    def cost_ms(heads: int, channels: int) -> float:
        """What a layer of these widths adds over an empty one: its stack timed beside the empty stack."""
        reference, own = timed(empty, stack(heads, channels))
        return (own - reference) / depth

    heads = range(shape.group_size, shape.num_heads + 1, shape.group_size)
    attention = _monotone({h: cost_ms(h, 0) for h in heads})
    mlp = _monotone({c: cost_ms(0, c) for c in _timed_widths(shape.intermediate_size, alignment, max_mlp_points)})
    # The anchor is a kept layer of full attention: the rest of its time is the base.
    base = max(anchor_ms - layer - attention[shape.num_heads], 0.0)
    return LatencyTable(
        setting=setting,
        device=device_name(adapter.device),
        dtype=dtype_name(dtype),
        alignment=alignment,
        intermediate_size=shape.intermediate_size,
        base_ms=base,
        attention_ms=attention,
        mlp_points=mlp,
        build_seconds=0.0,
        layer_ms=layer,
        stack_base_ms=base,
        stack_layer_ms=layer,
    )


def _stack_steppers(
    adapter: Adapter, setting: LatencySetting, dtype: torch.dtype, depth: int
) -> Callable[..., Stepper]:
    """``stepper(heads, channels, depth=depth)``: a model of the family whose first layer is full
    attention (the anchor) and whose next ``depth`` layers all keep these widths.

    Every model has the anchor, so what a forward does once when it has any attention (the causal mask,
    rotary tables) is in the base, not in every attention sub-block."""
    shape, device = adapter.shape, adapter.device
    anchor = LayerArch(shape.num_heads, 0)

    def stepper(heads: int, channels: int, depth: int = depth) -> Stepper:
        config = layers_config(adapter, [anchor] + [LayerArch(heads, channels)] * depth)
        return Stepper(build_skeleton(config, device=device, dtype=dtype), setting, causal=shape.causal)

    return stepper


@dataclass(frozen=True)
class LatencyModel:
    """A job's latency model: its table, and the dense model's predicted latency the ratios are of."""

    table: LatencyTable
    dense_ms: float

    @classmethod
    def of(cls, table: LatencyTable, dense: ArchConfig) -> LatencyModel:
        return cls(table, table.predict_ms(dense.layers))

    def predict_ms(self, layers: Sequence[LayerArch]) -> float:
        return self.table.predict_ms(layers)

    def ratio(self, layers: Sequence[LayerArch]) -> float:
        return self.predict_ms(layers) / self.dense_ms

    def fits(self, layers: Sequence[LayerArch], latency_ratio: float) -> bool:
        return self.predict_ms(layers) <= latency_ratio * self.dense_ms

    def floor_ratio(self) -> float:
        """The least a candidate can cost: the embeddings and LM head, and one layer with the cheapest
        one sub-block (a candidate keeps at least one, or there is no model to export)."""
        table = self.table
        cheapest = min(table.attention(min(h for h in table.attention_ms if h)), table.mlp(table.alignment))
        return (table.base_ms + table.layer_ms + cheapest) / self.dense_ms


def latency_model(adapter: Adapter, artifacts: Any, spec: JobSpec, dtype: torch.dtype) -> LatencyModel:
    """The job's latency model from the artifact store, timing the table first where it holds none."""
    setting = spec.target.latency
    alignment = spec.search_space.alignment
    key: TableKey = (
        device_name(adapter.device),
        dtype_name(dtype),
        setting.phase,
        setting.batch,
        setting.context,
        alignment,
    )
    built: list[LatencyTable] = []

    def build() -> LatencyTable:
        built.append(build_table(adapter, setting, dtype=dtype, alignment=alignment))
        return built[-1]

    table = artifacts.get(LATENCY_TABLE, key, build)
    if not built and (drift := _drift(adapter, table, dtype)) is not None:
        log.warning(
            "the latency table of %s steps its probe model %.2fx as long as when it was timed; timing it again",
            key, drift,
        )  # fmt: skip
        table = dataclasses.replace(build(), source="re-timed")
        artifacts.replace(LATENCY_TABLE, key, table)
    model = LatencyModel.of(table, adapter.shape.dense_arch())
    check_latency_budget(spec, model)
    return model


def _drift(adapter: Adapter, table: LatencyTable, dtype: torch.dtype) -> float | None:
    """How much longer (or shorter) the table's probe model steps now than when the table was timed,
    where that is beyond ``DRIFT``; else None. A table is timed once and read by every later job, but a
    host's speed is not fixed: a CPU table timed while the machine was busy predicted every later step
    2-4x as long as it took (the job's check: dense 93 ms predicted, 25 ms measured)."""
    stored = next((point for point in table.calibration if point.name == PROBE), None)
    if stored is None:  # the device had no room for the calibration models: nothing to compare
        return None
    arch = calibration.calibration_archs(adapter.shape, table.alignment)[PROBE]
    now = calibration.measure(
        adapter, table.setting, dtype, table.split_ms, {PROBE: arch},
        warmup=TABLE_WARMUP, repeats=TABLE_REPEATS, min_seconds=CALIBRATION_SECONDS, passes=calibration.PASSES,
    )  # fmt: skip
    if not now:
        return None
    ratio = now[0].measured_ms / stored.measured_ms
    return ratio if max(ratio, 1 / ratio) > DRIFT else None


def check_latency_budget(spec: JobSpec, model: LatencyModel) -> None:
    """Refuse a latency budget below what the embeddings and LM head alone cost on this device."""
    floor = model.floor_ratio()
    budgets = spec.latency_range(floor)
    if budgets is None:
        return
    if budgets[1] <= floor:
        raise BudgetInfeasible(
            f"target.latency_ratio is unreachable on {model.table.device}: the embeddings, LM head and one sub-block "
            f"alone take {floor:.3f} of the dense model's predicted step ({model.dense_ms:.3f} ms) in this setting"
        )


def with_alignment(spec: JobSpec, alignment: int) -> JobSpec:
    """``spec`` with its FFN alignment set (what a latency job that named none runs with)."""
    space = spec.search_space.model_copy(update={"ffn_alignment": alignment})
    return spec.model_copy(update={"search_space": space})


__all__ = [
    "LATENCY_TABLE",
    "LatencyModel",
    "LatencyTable",
    "build_table",
    "check_latency_budget",
    "device_alignment",
    "latency_model",
    "with_alignment",
]
