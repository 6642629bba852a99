"""Liveness and readiness probes for compose / Kubernetes health checks."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import CeleryDep, SessionDep
from service.api.openapi import problem_responses
from service.api.readiness import check_readiness
from service.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz", response_model=Readiness, responses=problem_responses(503), summary="Database and broker reachable"
)
def readyz(session: SessionDep, celery_app: CeleryDep) -> Readiness:
    return check_readiness(session, celery_app)
