"""Predicted against measured latency: every verified candidate of a latency job, materialised as its
export would be (``search.export.materialize``: physically sliced, in the export's precision) and
timed in the job's setting on the worker's device, beside the dense model. All of them are timed in
``MEASURE_PASSES`` passes over the lot (``search.latency_timing.least_of_passes``), so a few slow
seconds of a shared host slow one pass of a candidate, not its figure.

The measured figure goes into the candidate's verified figures (``latency_ms``), so the trials table,
the Pareto front and the report show it beside its held-out metrics; the report's ``latency`` section
holds both figures for every candidate and the job's median prediction error.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import nn

from search.arch import ArchConfig
from search.candidates import SearchContext
from search.export import materialize
from search.latency_timing import kept_timer, least_of_passes, room_for, step_ms
from search.precision import export_dtype
from search.results import LatencyCheck, LatencyReport, SearchResult, TrialInfo
from search.spec import LatencySetting
from search.speed import dense_copied, dense_in

MEASURE_WARMUP = 3
MEASURE_REPEATS = 10
MEASURE_SECONDS = 0.5  # and at least this long: a decode step of a few milliseconds is timed ~100 times
MEASURE_PASSES = 3  # the least of this many medians, as the table's calibration models are timed


def check_latency(context: SearchContext, result: SearchResult) -> LatencyReport:
    """Time the dense model and every verified candidate; note each one's measured latency in its
    verified figures and return the report's section."""
    model = context.latency
    assert model is not None
    loaded, spec = context.loaded, context.spec
    adapter, setting = loaded.adapter, spec.target.latency
    dtype = export_dtype(adapter.model, loaded.source)
    trials = {trial.number: trial for trial in result.trials}
    archs = {number: ArchConfig.from_dict(trials[number].arch) for number in sorted(result.verified)}  # type: ignore[arg-type]
    measured = _measure_all(context, archs, dtype)
    checks = {
        number: _check(trials[number], model.predict_ms(arch.layers), measured[number])
        for number, arch in archs.items()
    }
    for number, check in checks.items():
        verified = result.verified[number]
        result.verified[number] = verified.model_copy(
            update={"metrics": verified.metrics | {"latency_ms": check.measured_ms}}
        )
    table = model.table
    return LatencyReport(
        phase=setting.phase,
        batch=setting.batch,
        context=setting.context,
        device=table.device,
        dtype=table.dtype,
        ffn_alignment=table.alignment,
        table=table.source,
        table_seconds=table.build_seconds,
        table_fit_error=table.calibration_error,
        budget_ratio=spec.target.latency_ratio,
        dense=LatencyCheck(
            trial_number=None,
            origin=None,
            predicted_ms=model.dense_ms,
            measured_ms=measured[None],
            error=model.dense_ms / measured[None] - 1,
        ),
        finalists=list(checks.values()),
        median_abs_error=statistics.median(abs(c.error) for c in checks.values()) if checks else None,
    )


def _check(trial: TrialInfo, predicted: float, measured: float) -> LatencyCheck:
    return LatencyCheck(
        trial_number=trial.number,
        origin=trial.origin,
        predicted_ms=predicted,
        measured_ms=measured,
        error=predicted / measured - 1,
    )


def measured_ms(model: nn.Module, setting: LatencySetting, *, causal: bool) -> float:
    """One pass of a model as the check times it (``least_of_passes`` keeps the least of them)."""
    return step_ms(
        model, setting, causal=causal, warmup=MEASURE_WARMUP, repeats=MEASURE_REPEATS, min_seconds=MEASURE_SECONDS
    )


def _measure_all(context: SearchContext, archs: dict[int, ArchConfig], dtype: torch.dtype) -> dict[int | None, float]:
    """The dense model (key None) and each candidate materialised as exported, timed in passes over
    all of them. A candidate stays on the device between passes while all of them fit beside the
    dense model; otherwise it is materialised again for each pass."""
    loaded = context.loaded
    adapter, setting = loaded.adapter, context.spec.target.latency
    causal = adapter.shape.causal
    params = sum(adapter.shape.count_params(arch) for arch in archs.values())

    def time_ms(model: nn.Module) -> float:
        return measured_ms(model, setting, causal=causal)

    def dense(_: int) -> float:
        with dense_in(loaded, dtype) as model:
            return time_ms(model)

    copied = dense_copied(loaded, dtype)  # a second dense model comes and goes every pass: keep nothing

    def keep() -> bool:
        return adapter.device.type == "cuda" and not copied and room_for(adapter.device, params, dtype)

    def build(arch: ArchConfig) -> Callable[[], nn.Module]:
        selection = context.selection(arch)
        return lambda: materialize(adapter, selection, device=adapter.device, source=loaded.source)[0]

    timers: dict[int | None, Callable[[int], float]] = {None: dense}
    for number, arch in archs.items():
        timers[number] = kept_timer(build(arch), time_ms, passes=MEASURE_PASSES, keep=keep)
    return least_of_passes(timers, MEASURE_PASSES)
