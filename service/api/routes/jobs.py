"""``/v1/jobs``: submit, list, read, read the whole spec, list trials, cancel, resume.

Each route also checks ownership itself (``require_owned_job``, or ``owned_stamp`` for the polled
reads), on top of the router's ``service.api.auth.API_GUARDS``, so reading one route tells the whole
story. The polled reads (a job, its spec, a page of its trials) are conditional GETs
(``service.api.conditional``): an ``ETag`` from the job's stored version, 304 for a current
``If-None-Match``, and a body rendered once per version.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Header, Query, Request, Response

from service import repository
from service.api.auth import PrincipalDep, require_owned_job
from service.api.conditional import conditional_response
from service.api.deps import CeleryDep, SessionDep, SettingsDep, released
from service.api.openapi import problem_responses
from service.api.polls import polled
from service.api.schemas import API_PREFIX, JobOut, JobPage, JobSubmission, ResumeIn, TrialOut, TrialPage, job_path
from service.errors import InvalidRequest
from service.models import IDEMPOTENCY_KEY_LENGTH
from service.notify.dispatch import send_new_deliveries
from service.resumption import resume_job
from service.settings import Settings
from service.states import JobStatus
from service.submission import submit_job

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["jobs"])

DEFAULT_PAGE = 50
# Seconds a client should wait before polling a job it just submitted.
POLL_AFTER_S = 2

Limit = Annotated[int | None, Query(ge=1, description="Page size: default 50, at most the server's api_page_max.")]
Cursor = Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page.")]
IfNoneMatch = Annotated[
    str | None,
    Header(description="The ETag of an earlier answer: 304 without a body while nothing it shows has changed."),
]
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified: the If-None-Match tag is current (no body; the ETag header repeats it)."}
}


def _check_limit(limit: int | None, settings: Settings) -> int:
    if limit is None:
        return min(DEFAULT_PAGE, settings.api_page_max)
    if limit > settings.api_page_max:
        raise InvalidRequest(f"limit {limit} is above this server's maximum page size {settings.api_page_max}")
    return limit


def _next_link(path: str, cursor: str | None, **params: object) -> str | None:
    if cursor is None:
        return None
    query = {key: value for key, value in params.items() if value is not None}
    return f"{path}?{urlencode({**query, 'cursor': cursor})}"


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={200: {"description": "Already submitted with this Idempotency-Key", "model": JobOut}}
    | problem_responses(400, 401, 413, 422, 429, 503),
    summary="Submit a compression job",
)
def create_job(
    body: JobSubmission,
    response: Response,
    session: SessionDep,
    celery_app: CeleryDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=IDEMPOTENCY_KEY_LENGTH,
            description="Re-sending with the same key returns the same job (keys are per API key).",
        ),
    ] = None,
) -> JobOut:
    submission = submit_job(
        session,
        celery_app,
        settings,
        body.job_spec(),
        idempotency_key=idempotency_key,
        owner=principal.owner,
        key_id=principal.key_id,
        notify_url=body.notify.url if body.notify is not None else None,
    )
    response.headers["Location"] = job_path(submission.job.id)
    if submission.created:
        response.headers["Retry-After"] = str(POLL_AFTER_S)
    else:
        response.status_code = 200
    return released(session, JobOut.from_row(submission.job))


@router.get(
    "", response_model=JobPage, responses=problem_responses(400, 401, 422), summary="List your jobs, newest first"
)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    limit: Limit = None,
    cursor: Cursor = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
) -> JobPage:
    jobs, next_cursor = repository.list_jobs(
        session, owner=principal.owner, limit=_check_limit(limit, settings), cursor=cursor, status=status
    )
    page = JobPage(
        items=[JobOut.from_row(job) for job in jobs],
        next_cursor=next_cursor,
        next=_next_link(f"{API_PREFIX}/jobs", next_cursor, limit=limit, status=status.value if status else None),
    )
    return released(session, page)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses=NOT_MODIFIED | problem_responses(401, 404),
    summary="Read a job (its spec less inline calibration texts: links.spec has the whole)",
)
async def get_job(job_id: str, request: Request, if_none_match: IfNoneMatch = None) -> Response:
    poll = polled(request, job_id)

    def render() -> bytes:
        with poll.session() as session:
            return (
                JobOut.from_row(require_owned_job(session, job_id, poll.principal))
                .model_dump_json(by_alias=True)
                .encode()
            )

    return await conditional_response(("job", job_id, *poll.stamp.version()), if_none_match, poll.bodies, render)


@router.get(
    "/{job_id}/spec",
    response_model=dict[str, Any],
    responses=NOT_MODIFIED | problem_responses(401, 404),
    summary="Read a job's whole specification, inline calibration texts included",
)
async def get_spec(job_id: str, request: Request, if_none_match: IfNoneMatch = None) -> Response:
    poll = polled(request, job_id)

    def render() -> bytes:
        with poll.session() as session:
            spec = require_owned_job(session, job_id, poll.principal).spec
        return json.dumps(spec, ensure_ascii=False, separators=(",", ":")).encode()

    return await conditional_response(("spec", job_id, *poll.stamp.version()), if_none_match, poll.bodies, render)


@router.get(
    "/{job_id}/trials",
    response_model=TrialPage,
    responses=NOT_MODIFIED | problem_responses(400, 401, 404, 422),
    summary="List a job's trials by trial number",
)
async def list_trials(
    job_id: str,
    request: Request,
    limit: Limit = None,
    cursor: Cursor = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    poll = polled(request, job_id)
    size = _check_limit(limit, poll.settings)

    def render() -> bytes:
        with poll.session() as session:
            trials, next_cursor = repository.list_trials(session, job_id, limit=size, cursor=cursor)
            page = TrialPage(
                items=[TrialOut.from_row(trial) for trial in trials],
                next_cursor=next_cursor,
                next=_next_link(f"{job_path(job_id)}/trials", next_cursor, limit=limit),
            )
        return page.model_dump_json(by_alias=True).encode()

    # Every write to a trial sets the job's updated_at, so the job's stamp versions its trials too.
    key = ("trials", job_id, *poll.stamp.version(), limit, cursor)
    return await conditional_response(key, if_none_match, poll.bodies, render)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(401, 404, 409),
    summary="Cancel a job (a running one stops after its current trial)",
)
def cancel_job(job_id: str, session: SessionDep, celery_app: CeleryDep, principal: PrincipalDep) -> JobOut:
    require_owned_job(session, job_id, principal)
    job = repository.request_cancel(session, job_id)
    session.commit()
    # A queued job ends here, not in a worker: its webhook is sent from here too.
    send_new_deliveries(session, celery_app, job_id)
    return released(session, JobOut.from_row(job))


@router.post(
    "/{job_id}/resume",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(400, 401, 404, 409, 413, 422, 429),
    summary="Resume a cancelled or failed job: its study continues up to n_trials, keeping every trial",
)
def resume(
    job_id: str,
    session: SessionDep,
    celery_app: CeleryDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    body: ResumeIn | None = None,
) -> JobOut:
    require_owned_job(session, job_id, principal)
    job = resume_job(session, celery_app, settings, job_id, n_trials=body.n_trials if body is not None else None)
    return released(session, JobOut.from_row(job))
