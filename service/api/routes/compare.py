"""``/v1/compare``: jobs of one model side by side (fronts, best architectures, verified figures)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.auth import PrincipalDep
from service.api.comparison import compare_jobs, parse_job_ids
from service.api.deps import SessionDep, released
from service.api.openapi import problem_responses
from service.api.schemas import API_PREFIX, MAX_COMPARED_JOBS, Comparison

router = APIRouter(prefix=API_PREFIX, tags=["compare"])

# Room for MAX_COMPARED_JOBS ids of 32 characters and their commas, with slack for spaces.
_MAX_QUERY = 64 * MAX_COMPARED_JOBS


@router.get(
    "/compare",
    response_model=Comparison,
    responses=problem_responses(401, 404, 422),
    summary="Compare jobs of one model: their fronts, best architectures and verified figures",
    description=f"`jobs`: 2 to {MAX_COMPARED_JOBS} of your job ids, comma-separated, all on the same model "
    "(else 422). An id that is not one of your jobs is 404. The answer holds each job's Pareto front "
    "(as GET /v1/jobs/{id}/pareto), best architecture and held-out figures, in the order asked.",
)
def compare(
    session: SessionDep,
    principal: PrincipalDep,
    jobs: Annotated[str, Query(max_length=_MAX_QUERY, description="Job ids, comma-separated: jobs=ID,ID")],
) -> Comparison:
    comparison = compare_jobs(session, parse_job_ids(jobs), principal)
    return released(session, comparison)
