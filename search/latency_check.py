"""Predicted against measured latency: every verified candidate of a latency job, materialised as its
export would be (``search.export.materialize``: physically sliced, in the export's precision) and
timed in the job's setting on the worker's device, beside the dense model.

The measured figure goes into the candidate's verified figures (``latency_ms``), so the trials table,
the Pareto front and the report show it beside its held-out metrics; the report's ``latency`` section
holds both figures for every candidate and the job's median prediction error.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from search.arch import ArchConfig
from search.candidates import SearchContext
from search.export import materialize
from search.latency import step_ms
from search.precision import export_dtype
from search.results import LatencyCheck, LatencyReport, SearchResult, TrialInfo
from search.spec import LatencySetting
from search.speed import dense_in

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
    causal = adapter.shape.causal
    with dense_in(loaded, dtype) as dense:
        dense_ms = _measure(dense, setting, causal=causal)
    trials = {trial.number: trial for trial in result.trials}
    checks = {number: _check(context, trials[number]) for number in sorted(result.verified)}
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
            measured_ms=dense_ms,
            error=model.dense_ms / dense_ms - 1,
        ),
        finalists=list(checks.values()),
        median_abs_error=statistics.median(abs(c.error) for c in checks.values()) if checks else None,
    )


def _check(context: SearchContext, trial: TrialInfo) -> LatencyCheck:
    """One candidate materialised as exported and timed, beside its prediction."""
    assert context.latency is not None
    loaded = context.loaded
    adapter = loaded.adapter
    arch = ArchConfig.from_dict(trial.arch)  # type: ignore[arg-type]
    exported, _, _ = materialize(adapter, context.selection(arch), device=adapter.device, source=loaded.source)
    setting = context.spec.target.latency
    measured = _measure(exported, setting, causal=adapter.shape.causal)
    del exported
    _empty_cache()
    predicted = context.latency.predict_ms(arch.layers)
    return LatencyCheck(
        trial_number=trial.number,
        origin=trial.origin,
        predicted_ms=predicted,
        measured_ms=measured,
        error=predicted / measured - 1,
    )


def _measure(model: nn.Module, setting: LatencySetting, *, causal: bool) -> float:
    return step_ms(
        model,
        setting,
        causal=causal,
        warmup=MEASURE_WARMUP,
        repeats=MEASURE_REPEATS,
        min_seconds=MEASURE_SECONDS,
        passes=MEASURE_PASSES,
    )


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
