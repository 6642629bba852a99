"""A job's results: Pareto front, report, exported models (list, files, tar) and export requests
(a trial's model, an export's ONNX graph)."""

from __future__ import annotations

import mimetypes
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import FileResponse, StreamingResponse

from search.results import JobReport
from service import repository
from service.api import exports
from service.api.deps import CeleryDep, SessionDep, SettingsDep
from service.api.openapi import problem_responses
from service.api.schemas import (
    API_PREFIX,
    Artifact,
    ArtifactList,
    ModelWidths,
    ParetoFront,
    artifacts_path,
)
from service.api.widths import dense_shape
from service.errors import NotFound

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["results"])

TAR_MEDIA_TYPE = "application/x-tar"
# Shown in the browser rather than downloaded; everything else is an attachment.
_INLINE_TYPES = ("application/json", "text/")

TrialNumber = Annotated[int, Path(ge=0, description="Optuna's trial number.")]


def _binary(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": description, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}
    }


@router.get(
    "/{job_id}/pareto",
    response_model=ParetoFront,
    responses=problem_responses(404),
    summary="The job's Pareto front: complete trials no other trial beats on every objective",
)
def get_pareto(job_id: str, session: SessionDep) -> ParetoFront:
    job = repository.require_job(session, job_id)
    return ParetoFront.of_job(job, repository.list_complete_trials(session, job_id))


@router.get(
    "/{job_id}/report",
    response_model=JobReport,
    response_model_exclude_unset=True,
    responses=problem_responses(404),
    summary="The job's report (verification, export, proxy trust), written when the search ends",
)
def get_report(job_id: str, session: SessionDep) -> JobReport:
    job = repository.require_job(session, job_id)
    if job.report is None:
        raise NotFound(f"job {job_id!r} has no report yet; the worker writes it when the search ends")
    return JobReport.model_validate(job.report)


@router.get(
    "/{job_id}/model",
    response_model=ModelWidths,
    responses=problem_responses(404),
    summary="The dense model's widths (layers, heads, FFN channels), read from its config.json",
)
def get_model(job_id: str, session: SessionDep) -> ModelWidths:
    job = repository.require_job(session, job_id)
    return ModelWidths.from_shape(dense_shape(job.model))


@router.get(
    "/{job_id}/artifacts",
    response_model=ArtifactList,
    responses=problem_responses(404),
    summary="List the job's exported models",
)
def list_artifacts(job_id: str, session: SessionDep, settings: SettingsDep) -> ArtifactList:
    repository.require_job(session, job_id)
    found = exports.list_exports(settings.artifacts_dir, job_id)
    return ArtifactList(items=[Artifact.from_export(job_id, export) for export in found])


@router.get(
    "/{job_id}/artifacts/{name}.tar",
    response_class=StreamingResponse,
    responses=_binary(TAR_MEDIA_TYPE, "The export as an uncompressed tar, members under '<name>/'")
    | problem_responses(404, 409),
    summary="Download a whole export as a tar (curl ... | tar x)",
    description="`best.tar` is the best model; `best.onnx.tar` its ONNX graph once converted "
    "(POST /v1/jobs/{job_id}/artifacts/best/onnx).",
)
def download_archive(job_id: str, name: str, session: SessionDep, settings: SettingsDep) -> StreamingResponse:
    repository.require_job(session, job_id)
    stream = exports.tar_export(settings.artifacts_dir, job_id, name)
    headers = {"Content-Length": str(stream.size), "Content-Disposition": f'attachment; filename="{name}.tar"'}
    return StreamingResponse(stream.chunks, media_type=TAR_MEDIA_TYPE, headers=headers)


@router.get(
    "/{job_id}/artifacts/{name}/{path:path}",
    response_class=FileResponse,
    responses=_binary("application/octet-stream", "The file; its media type follows its name")
    | problem_responses(404, 409),
    summary="Download one file of an export",
)
def download_file(job_id: str, name: str, path: str, session: SessionDep, settings: SettingsDep) -> FileResponse:
    repository.require_job(session, job_id)
    target = exports.export_file(settings.artifacts_dir, job_id, name, path)
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    disposition = "inline" if media_type.startswith(_INLINE_TYPES) else "attachment"
    return FileResponse(target, media_type=media_type, filename=target.name, content_disposition_type=disposition)


@router.post(
    "/{job_id}/trials/{number}/export",
    status_code=202,
    response_model=Artifact,
    responses={200: {"description": "Already exported", "model": Artifact}} | problem_responses(404, 409, 503),
    summary="Export one complete trial as a model (appears under /artifacts as trial-<number>)",
)
def export_trial(
    job_id: str,
    number: TrialNumber,
    response: Response,
    session: SessionDep,
    celery_app: CeleryDep,
    settings: SettingsDep,
) -> Artifact:
    export, _sent = exports.request_trial_export(session, celery_app, settings.artifacts_dir, job_id, number)
    response.headers["Location"] = artifacts_path(job_id)
    if export.status == "ready":
        response.status_code = 200
    return Artifact.from_export(job_id, export)


@router.post(
    "/{job_id}/artifacts/{name}/onnx",
    status_code=202,
    response_model=Artifact,
    responses={200: {"description": "Already converted", "model": Artifact}} | problem_responses(404, 409, 503),
    summary="Convert an export into an ONNX graph (appears under /artifacts as <name>.onnx)",
    description=(
        "The worker writes the ONNX graph of export `name` (per-layer exports included) as the export "
        "`<name>.onnx`: `model.onnx`, `onnx_layout.json` (inputs, outputs, and for decoders the KV cache: "
        "one `past.{j}.key`/`past.{j}.value` pair per kept attention, with its layer, KV heads and head "
        "size), tokenizer and config. Decoders take and return the cache, so they generate "
        "(`search.onnx_runtime.generate_onnx`). 202 while it is written (Location: the artifacts list, "
        "where its status shows); then `GET /v1/jobs/{job_id}/artifacts/<name>.onnx.tar` downloads it. "
        "200 if it is ready; 409 while `name` itself is still written."
    ),
)
def export_onnx(
    job_id: str, name: str, response: Response, session: SessionDep, celery_app: CeleryDep, settings: SettingsDep
) -> Artifact:
    export, _sent = exports.request_onnx_export(session, celery_app, settings.artifacts_dir, job_id, name)
    response.headers["Location"] = artifacts_path(job_id)
    if export.status == "ready":
        response.status_code = 200
    return Artifact.from_export(job_id, export)
