"""What a polled route (a job, its spec, a page of its trials) needs, taken from the request.

Not as FastAPI dependencies: FastAPI solves each dependency of each request anew, a shared one too,
and on a poll answered from ``service.api.conditional``'s cache that bookkeeping cost more CPU than
everything else the route does. The guard (``service.api.auth.API_GUARDS``) has already run: it left
the caller and the job's stamp on ``request.state``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from service import repository
from service.api.auth import Principal, owned_stamp, polled_principal
from service.api.conditional import RenderedBodies
from service.settings import Settings

__all__ = ["Poll", "polled"]


@dataclass(frozen=True)
class Poll:
    principal: Principal
    stamp: repository.JobStamp
    bodies: RenderedBodies
    settings: Settings
    session: sessionmaker[Session]  # for rendering a version not rendered yet (in the thread pool)


def polled(request: Request, job_id: str) -> Poll:
    """The caller, the job's stamp (checked again to be the caller's), the rendered bodies, the settings."""
    principal = polled_principal(request)
    state = request.app.state
    return Poll(
        principal=principal,
        stamp=owned_stamp(request, job_id, principal),
        bodies=state.rendered_bodies,
        settings=state.settings,
        session=state.sessionmaker,
    )
