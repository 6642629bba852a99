"""Exports of a job's candidates into the artifact directory the API serves.

An export is written into ``{name}.partial/`` and renamed when complete, so the API never serves
half a model; a ``.partial`` left by a crashed worker is removed by the next writer.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from search.results import ExportReport, JobReport, SearchResult, verification_report
from service import repository
from service.artifacts import PARTIAL_SUFFIX, job_artifacts_dir, trial_export_name
from service.db import session_scope
from workers import runtime
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from search.candidates import SearchContext
    from search.loading import ModelCache

log = logging.getLogger(__name__)

BEST = "best"


def write_export(
    context: SearchContext, arch: dict[str, Any], target: Path, provenance: dict[str, Any], *, settings: WorkerSettings
) -> ExportReport:
    """Export one architecture to ``target`` atomically; returns its figures for the report."""
    from search.arch import ArchConfig
    from search.export import export_model, load_pruned
    from search.speed import speed_report

    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    info = export_model(context.loaded, context.selection(ArchConfig.from_dict(arch)), partial, provenance=provenance)
    # On the worker's device, exported and dense model side by side, in the export's precision.
    speed = speed_report(
        load_pruned(partial),
        context.loaded,
        settings.speed_workload(),
        pruned_size=info.weights_bytes,
        dense_size=info.dense_weights_bytes,
    )
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return ExportReport(
        name=target.name,
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


def report(job_id: str, context: SearchContext, result: SearchResult, *, settings: WorkerSettings) -> JobReport:
    """The job's report: the verification ladder's figures, the exported best model and the proxy trust."""
    export = None
    if result.best is not None:
        target = job_artifacts_dir(settings.artifacts_dir, job_id) / BEST
        best = result.best.model_dump()
        export = write_export(context, best["arch"], target, _provenance(context, best), settings=settings)
    # Proxy trust (issue 4): rank correlation of every proxy used with the verified metric on a
    # stratified audit sample, biases towards size and depth, and a flag when the job's proxy is poor.
    return JobReport(verification=verification_report(result), export=export, pareto=result.pareto, trust=result.trust)


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
    write_export(context, entry["arch"], target, _provenance(context, entry), settings=settings)
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
