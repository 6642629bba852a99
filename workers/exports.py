"""Exports of a job's candidates into the artifact directory the API serves.

An export is written into ``{name}.partial/`` and renamed when complete, so the API never serves
half a model; a ``.partial`` left by a crashed worker is removed by the next writer.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from search.results import ExportReport, JobReport, SearchResult, verification_report
from service import repository
from service.artifacts import PARTIAL_SUFFIX, job_artifacts_dir, onnx_export_name, trial_export_name
from service.db import session_scope
from workers import runtime
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    import torch

    from search.candidates import SearchContext
    from search.export import ExportInfo
    from search.loading import ModelCache
    from search.recovery import RecoveryOutcome

log = logging.getLogger(__name__)

BEST = "best"


def write_export(
    context: SearchContext,
    arch: dict[str, Any],
    target: Path,
    provenance: dict[str, Any],
    *,
    weights: dict[str, torch.Tensor] | None = None,
) -> ExportInfo:
    """Export one architecture to ``target`` atomically (with ``weights``: its recovered weights)."""
    from search.arch import ArchConfig
    from search.export import export_model

    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    selection = context.selection(ArchConfig.from_dict(arch))
    info = export_model(context.loaded, selection, partial, provenance=provenance, weights=weights)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return replace(info, directory=target)


def export_report(context: SearchContext, info: ExportInfo, *, settings: WorkerSettings) -> ExportReport:
    """The report's figures of the exported best model, its speed measured beside the dense model on
    the worker's device in the export's precision (only for the best: trial exports on request skip it).

    Not for a model split over devices: its timings would be the transfers', and the export, moved
    to the main device beside it, may not fit there."""
    from search.export import load_pruned
    from search.speed import speed_report

    speed = None
    if not context.loaded.split:
        speed = speed_report(
            load_pruned(info.directory),
            context.loaded,
            settings.speed,
            pruned_size=info.weights_bytes,
            dense_size=info.dense_weights_bytes,
        )
    return ExportReport(
        name=info.directory.name,
        kind=info.kind,
        param_count=info.param_count,
        nonzero_params=info.nonzero_params,
        dense_params=context.shape.dense_params(),
        size_bytes=info.size_bytes,
        dtype=info.dtype,
        weights_bytes=info.weights_bytes,
        dense_weights_bytes=info.dense_weights_bytes,
        speed=speed,
    )


def report(
    job_id: str,
    context: SearchContext,
    result: SearchResult,
    *,
    settings: WorkerSettings,
    recovery: RecoveryOutcome | None = None,
) -> JobReport:
    """The job's report: the verification ladder's figures, the exported best model (the recovered
    winner when the job recovered its finalists) and the proxy trust."""
    info = None
    target = job_artifacts_dir(settings.artifacts_dir, job_id) / BEST
    if recovery is not None and recovery.winner is not None:
        winner = recovery.winner
        entry = next(t for t in result.trials if t.number == winner.trial_number).model_dump()
        entry["trial_number"] = winner.trial_number
        entry["verified"] = result.verified[winner.trial_number].to_dict()  # before recovery; after: below
        provenance = _provenance(context, entry) | {"recovery": _recovery_provenance(recovery, winner.trial_number)}
        info = write_export(context, entry["arch"], target, provenance, weights=winner.state)
    elif result.best is not None:
        best = result.best.model_dump()
        info = write_export(context, best["arch"], target, _provenance(context, best))
    # Proxy trust (issue 4): rank correlation of every proxy used with the verified metric on a
    # stratified audit sample, biases towards size and depth, and a flag when the job's proxy is poor.
    return JobReport(
        verification=verification_report(result),
        export=export_report(context, info, settings=settings) if info is not None else None,
        pareto=result.pareto,
        trust=result.trust,
        recovery=recovery.report if recovery is not None else None,
        latency=result.latency,
    )


def _recovery_provenance(recovery: RecoveryOutcome, number: int) -> dict[str, Any]:
    """What the export's provenance records of the recovery that trained its weights."""
    section = recovery.report.model_dump(mode="json", exclude={"finalists"})
    finalist = next(f for f in recovery.report.finalists if f.trial_number == number)
    return section | {"before": finalist.before, "after": finalist.after}


def export_trial(
    job_id: str, number: int, *, settings: WorkerSettings, sessions: sessionmaker[Session], models: ModelCache
) -> str:
    """Export trial ``number`` of a job on request (``POST /v1/jobs/{id}/trials/{n}/export``)."""
    target = job_artifacts_dir(settings.artifacts_dir, job_id) / trial_export_name(number)
    if target.is_dir():
        return "exists"  # a repeated request; exports never change once written
    with session_scope(sessions) as session:
        job = repository.get_job(session, job_id)
        trial = repository.get_trial(session, job_id, number)
        spec_data = job.spec if job is not None else None
        owner = job.owner if job is not None else None
        entry = (
            None
            if trial is None
            else {
                "trial_number": trial.number,
                "origin": trial.origin,
                "arch": trial.arch,
                "scores": trial.scores,
                "verified": trial.verified,
            }
        )
    if spec_data is None or entry is None or entry["arch"] is None:
        log.warning("export of job %s trial %s: no such trial", job_id, number)
        return "missing"
    context = runtime.prepare_spec(spec_data, owner, settings=settings, models=models)
    write_export(context, entry["arch"], target, _provenance(context, entry))
    return "exported"


def export_onnx(job_id: str, name: str, *, settings: WorkerSettings) -> str:
    """Convert export ``name`` of a job into its ONNX graph ``{name}.onnx`` on request
    (``POST /v1/jobs/{id}/artifacts/{name}/onnx``); written into ``.partial`` and renamed, like a model."""
    from search.onnx_export import export_onnx as write_onnx

    root = job_artifacts_dir(settings.artifacts_dir, job_id)
    source, target = root / name, root / onnx_export_name(name)
    if target.is_dir():
        return "exists"  # a repeated request; exports never change once written
    if not source.is_dir():
        log.warning("ONNX conversion of job %s export %s: no such export", job_id, name)
        return "missing"
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        write_onnx(source, partial)
    except BaseException:
        # Not left as a ".partial" that the API would list as pending forever: a new request retries.
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(target)
    return "exported"


def _provenance(context: SearchContext, entry: dict[str, Any]) -> dict[str, Any]:
    spec = context.spec
    return {
        "trial_number": entry["trial_number"],
        "origin": entry.get("origin"),
        "scores": entry.get("scores"),
        "verified": entry.get("verified"),
        "calibration_digest": context.tokens.digest,
        "job_spec": spec.model_dump(mode="json"),
    }
