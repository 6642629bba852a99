"""``GET /v1/compare``: several jobs of one model side by side, in one answer.

The jobs are named in one query parameter, ``jobs=a,b,c``. Each must be the caller's (someone else's
job is 404, as on ``GET /v1/jobs/{id}``), and all must prune the same model: fronts and per-layer
widths of different models cannot be drawn against one another.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service import repository
from service.api.auth import Principal, require_owned_job
from service.api.schemas import MAX_COMPARED_JOBS, ComparedJob, Comparison, ModelWidths
from service.api.widths import dense_shape
from service.errors import InvalidRequest, NotFound
from service.models import Job

__all__ = ["compare_jobs", "parse_job_ids"]

JOBS_PARAMETER = "jobs"


def _invalid(message: str) -> InvalidRequest:
    error = {"loc": ["query", JOBS_PARAMETER], "msg": message, "type": "value_error"}
    return InvalidRequest(f"{JOBS_PARAMETER}: {message}", extensions={"errors": [error]})


def parse_job_ids(raw: str) -> list[str]:
    """The ids of ``jobs=a,b,c``, in order; ``InvalidRequest`` (422 naming ``jobs``) for a malformed list."""
    ids = [part.strip() for part in raw.split(",")]
    if any(not job_id for job_id in ids):
        raise _invalid("a comma-separated list of job ids, without empty entries (jobs=ID,ID)")
    repeated = sorted({job_id for job_id in ids if ids.count(job_id) > 1})
    if repeated:
        raise _invalid(f"job {repeated[0]!r} is listed twice")
    if not 2 <= len(ids) <= MAX_COMPARED_JOBS:
        raise _invalid(f"{len(ids)} job(s) given: a comparison holds 2 to {MAX_COMPARED_JOBS} jobs")
    return ids


def _same_model(jobs: list[Job]) -> str:
    models = list(dict.fromkeys(job.model for job in jobs))
    if len(models) > 1:
        named = "; ".join(f"{job.id} prunes {job.model!r}" for job in jobs)
        raise _invalid(f"the jobs must prune the same model: {named}")
    return models[0]


def _widths(model: str) -> ModelWidths | None:
    try:
        return ModelWidths.from_shape(dense_shape(model))
    except NotFound:
        return None  # a hub id, or a folder gone since: the page scales bars by the widest layer


def compare_jobs(session: Session, job_ids: list[str], principal: Principal) -> Comparison:
    """The comparison of ``job_ids`` (parsed by ``parse_job_ids``) as ``principal`` may see it."""
    jobs = [require_owned_job(session, job_id, principal) for job_id in job_ids]
    model = _same_model(jobs)
    compared = [ComparedJob.from_row(job, repository.list_complete_trials(session, job.id)) for job in jobs]
    return Comparison(model=model, widths=_widths(model), jobs=compared)
