"""A measured latency model: what one step of a candidate costs on the worker's own device.

Once per (model, device, precision, setting, FFN alignment) the worker times two-layer models of the
model's own family (``search.export.build_skeleton``, random weights): a first layer of full
attention, and a second layer at every width the search can choose: only attention at k KV groups,
only an MLP at c channels, or nothing. A sub-block's cost is its model's time less the one whose
second layer is empty; the base (embeddings, final norm, LM head, and what a forward does once when
it has attention, such as the causal mask) is the empty one's less a full attention sub-block. A
candidate's predicted latency is

    base + Σ_layers attention(heads) + mlp(channels)

(dropped sub-blocks cost nothing, exactly as an export drops them). The table lives in the model's
artifact store (``LATENCY_TABLE``), so a later job on the same GPU type reads it instead of timing
again, and a prediction is a few dictionary lookups (microseconds).

Two rules keep predictions usable by repair's bisection and honest about hardware:
- monotone: a sub-block's cost never falls as it keeps more (a running maximum over the widths,
  which also absorbs timing noise on a shared machine);
- aligned: widths are timed on the job's FFN alignment grid, and a width between two grid points
  costs what the next grid point costs, so an odd width is never predicted faster than its aligned
  neighbour. Where an alignment is not given, ``device_alignment`` picks it (see there).

Unstructured sparsity is ignored: zeros in dense tensors save no time.
"""

from __future__ import annotations

import bisect
import inspect
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from search.adapters import Adapter
from search.arch import ArchConfig, LayerArch
from search.artifacts import Artifact
from search.errors import BudgetInfeasible
from search.export import build_skeleton, layers_config
from search.precision import dtype_name
from search.spec import JobSpec, LatencySetting

TABLE_VERSION = 1
TIE_MS = 1e-6  # a nanosecond: the least one more width costs in the table
MAX_MLP_POINTS = 33  # MLP widths timed per table; the grid points between are interpolated
TABLE_WARMUP = 2
TABLE_REPEATS = 5
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
    base_ms: float  # embeddings, final norm, LM head (the empty one-layer model)
    attention_ms: dict[int, float]  # kept query heads (whole KV groups, 0 included) → ms
    mlp_points: dict[int, float]  # timed FFN widths (0 included) → ms
    build_seconds: float
    source: str = "measured"  # "measured" by this process, or "stored" (read from the artifact store)
    _mlp_grid: dict[int, float] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every width on the alignment grid, interpolated between the timed ones (linear, so still monotone).
        widths = sorted(self.mlp_points)
        grid = {
            width: _interpolate(widths, self.mlp_points, width)
            for width in _grid(self.intermediate_size, self.alignment)
        }
        object.__setattr__(self, "_mlp_grid", grid)

    def attention(self, heads: int) -> float:
        return self.attention_ms[heads] if heads else 0.0

    def mlp(self, channels: int) -> float:
        if not channels:
            return 0.0
        aligned = min(-(-channels // self.alignment) * self.alignment, self.intermediate_size)
        return self._mlp_grid[aligned]

    def predict_ms(self, layers: Sequence[LayerArch]) -> float:
        """Predicted milliseconds of one step of a model with these layers."""
        return self.base_ms + sum(self.attention(layer.heads) + self.mlp(layer.ffn_channels) for layer in layers)


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
    """Increasing in the width: a running maximum (timing noise cannot make a wider sub-block
    cheaper), each width at least ``TIE_MS`` above the narrower one (what noise hid still costs
    something, so a table of a fast device or a noisy machine still ranks widths)."""
    result, highest = {}, -TIE_MS
    for width in sorted(values):
        highest = max(highest + TIE_MS, values[width], 0.0)
        result[width] = highest
    return result


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


# --- timing ------------------------------------------------------------------------------------


def random_ids(vocab: int, batch: int, tokens: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (batch, tokens), generator=generator).to(device)


class Stepper:
    """One step of ``model`` in ``setting``, ready to time again and again: a forward over batch ×
    context tokens (prefill), or one new token per sequence against a KV cache of ``context`` tokens
    (decode; the cache is cropped back after every step, so every step sees the same context)."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, setting: LatencySetting, *, causal: bool) -> None:
        self.model, self.device = model, next(model.parameters()).device
        ids = random_ids(int(getattr(model.config, "vocab_size", 2)), setting.batch, setting.context, self.device)
        self.cache: Any = None
        if setting.phase == "prefill":
            self.inputs: dict[str, Any] = {"input_ids": ids} | ({"use_cache": False} if causal else {})
            return
        output = model(input_ids=ids, use_cache=True)
        cache = getattr(output, "cache", None)  # an empty cache is falsy: compare with None
        self.cache = cache if cache is not None else output.past_key_values
        # transformers 5 renames ``past_key_values`` to ``cache``; the old name still works, with a warning.
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.inputs = {"input_ids": ids[:, :1], "use_cache": True, name: self.cache}

    @torch.no_grad()
    def once(self) -> float:
        """Milliseconds of one step."""
        _synchronize(self.device)
        started = time.perf_counter()
        self.model(**self.inputs)
        _synchronize(self.device)
        elapsed = (time.perf_counter() - started) * 1000
        if self.cache is not None:
            _drop_step_token(self.cache)
        return elapsed


def _drop_step_token(cache: Any) -> None:
    """Crop the step's token from the cache, so it holds ``context`` tokens again. Layer by layer: a
    layer without attention (dropped) holds no keys, and ``Cache.crop`` of transformers 5.17 fails on it."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        cache.crop(-1)
        return
    for layer in layers:
        if getattr(layer, "keys", None) is not None:
            layer.crop(-1)


def step_ms(
    model: nn.Module,
    setting: LatencySetting,
    *,
    causal: bool,
    warmup: int = TABLE_WARMUP,
    repeats: int = TABLE_REPEATS,
) -> float:
    """Median milliseconds of one step of ``model`` in ``setting`` (``Stepper``), after ``warmup`` steps."""
    stepper = Stepper(model, setting, causal=causal)
    for _ in range(warmup):
        stepper.once()
    return statistics.median(stepper.once() for _ in range(repeats))


def paired_ms(reference: Stepper, other: Stepper, *, warmup: int, repeats: int) -> tuple[float, float]:
    """Median milliseconds of each, the two taking turns (the order alternating), so drift on a shared
    machine hits both alike and their difference is the other's own cost."""
    for _ in range(warmup):
        reference.once()
        other.once()
    times: tuple[list[float], list[float]] = ([], [])
    for repeat in range(repeats):
        order = ((0, reference), (1, other)) if repeat % 2 == 0 else ((1, other), (0, reference))
        for index, stepper in order:
            times[index].append(stepper.once())
    return statistics.median(times[0]), statistics.median(times[1])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
) -> LatencyTable:
    """Time two-layer models of ``adapter``'s family (module docstring) at every attention width and up to
    ``max_mlp_points`` FFN widths of the alignment grid (evenly spread, the smallest and the full
    width included), on the adapter's device in ``dtype``."""
    started = time.perf_counter()
    shape, device = adapter.shape, adapter.device
    alignment = max(1, min(alignment, shape.intermediate_size))
    stepper = _two_layer_steppers(adapter, setting, dtype)
    empty = stepper(0, 0)
    empty_times: list[float] = []

    def cost_ms(heads: int, channels: int) -> float:
        """What the second layer's sub-block adds: timed beside the empty model, turn about."""
        reference, own = paired_ms(empty, stepper(heads, channels), warmup=warmup, repeats=repeats)
        empty_times.append(reference)
        return own - reference

    heads = range(shape.group_size, shape.num_heads + 1, shape.group_size)
    attention = _monotone({0: 0.0} | {h: cost_ms(h, 0) for h in heads})
    mlp = _monotone(
        {0: 0.0} | {c: cost_ms(0, c) for c in _timed_widths(shape.intermediate_size, alignment, max_mlp_points)}
    )
    # The anchor's own attention is a full one: the rest of the empty model is the base.
    base = max(statistics.median(empty_times) - attention[shape.num_heads], 0.0)
    return LatencyTable(
        setting=setting,
        device=device_name(device),
        dtype=dtype_name(dtype),
        alignment=alignment,
        intermediate_size=shape.intermediate_size,
        base_ms=base,
        attention_ms=attention,
        mlp_points=mlp,
        build_seconds=time.perf_counter() - started,
    )


def _two_layer_steppers(adapter: Adapter, setting: LatencySetting, dtype: torch.dtype) -> Callable[[int, int], Stepper]:
    """``stepper(heads, channels)``: a two-layer model of the family, its second layer at these widths.

    Every model has a first layer of full attention, so what a forward does once when it has any
    attention (the causal mask, rotary tables) is in the base, not in every attention sub-block."""
    shape, device = adapter.shape, adapter.device
    anchor = LayerArch(shape.num_heads, 0)

    def stepper(heads: int, channels: int) -> Stepper:
        config = layers_config(adapter, [anchor, LayerArch(heads, channels)])
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
        """The least a candidate can cost: the embeddings and LM head, and the cheapest one sub-block
        (a candidate keeps at least one, or there is no model to export)."""
        table = self.table
        cheapest = min(table.attention(min(h for h in table.attention_ms if h)), table.mlp(table.alignment))
        return (table.base_ms + cheapest) / self.dense_ms


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
    table = artifacts.get(LATENCY_TABLE, key, lambda: build_table(adapter, setting, dtype=dtype, alignment=alignment))
    model = LatencyModel.of(table, adapter.shape.dense_arch())
    check_latency_budget(spec, model)
    return model


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
    "step_ms",
    "with_alignment",
]
