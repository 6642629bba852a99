"""Who is calling, and which jobs they may see.

Every ``/v1`` router is included with ``API_GUARDS``: the caller is authenticated with an API key
(``Authorization: Bearer psk_...``) and any ``{job_id}`` in the path must name one of the caller's
jobs, else 404 (not 403: another tenant's job ids are not confirmed to exist). Putting the check
on the router rather than in each route means a route added later cannot forget it.

Anonymous requests are served only while the server has no active key, and then only on a
loopback connection unless the operator sets ``allow_anonymous``. A server bound to another
address without keys refuses to start (``check_bind``).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar
from fastapi import Depends, FastAPI, Request, Security
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from service import apikeys, repository
from service.api.deps import SessionDep, SettingsDep
from service.api.openapi import problem_responses
from service.db import AsyncReads
from service.errors import NotFound, Unauthorized
from service.models import Job
from service.settings import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "ANONYMOUS",
    "API_GUARDS",
    "GUARDED_RESPONSES",
    "Principal",
    "PrincipalDep",
    "authorize_metrics",
    "check_bind",
    "install_auth",
    "is_loopback",
    "owned_stamp",
    "polled_principal",
    "require_owned_job",
]

# Job ids are uuid4 hex. Anything else cannot be a job: answer 404 without asking the database.
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_CHALLENGE = 'Bearer realm="prunesearch"'


@dataclass(frozen=True)
class Principal:
    """The caller. ``owner`` is what job rows record; ``None`` is the anonymous local user."""

    owner: str | None
    key_id: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.owner is None


ANONYMOUS = Principal(owner=None)

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `prunesearch keys create OWNER`. Optional only on a server that has no keys.",
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _arrived_on_loopback(request: Request) -> bool:
    # The server side of the socket: a server bound to 0.0.0.0 sees 127.0.0.1 for local clients
    # and its LAN address for the others. No address (Unix socket, in-process test transport)
    # means no network was crossed.
    server = request.scope.get("server")
    if not server or not isinstance(server[0], str):
        return True
    try:
        return ipaddress.ip_address(server[0]).is_loopback
    except ValueError:
        return True


async def _authorize(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> None:
    """``API_GUARDS``: who is calling, and whether the path's ``{job_id}`` is theirs, in one step.

    One read per request for a caller with a key (who is every caller on a server that has keys):
    the key's row and the job's stamp (owner and stored version, no JSON: ``repository.JobStamp``),
    kept on ``request.state``. A polled route answers from the stamp alone when nothing changed
    (``service.api.conditional``); the others load the job themselves.

    On PostgreSQL that read runs in the event loop (``service.db.AsyncReads``): no thread, no
    session. Otherwise (SQLite, or no key) it runs in the thread pool on a short session, at most
    ``GUARD_CONCURRENCY`` at a time.

    Takes the settings and sessions from the app rather than ``SessionDep`` and ``SettingsDep``:
    FastAPI solves each dependency of each request anew (a shared one too), and on a poll that
    bookkeeping cost more CPU than the query.
    """
    job_id = request.path_params.get("job_id")
    wanted = str(job_id) if job_id is not None and _JOB_ID.fullmatch(str(job_id)) else None
    reads: AsyncReads | None = request.app.state.async_reads
    if credentials is not None and reads is not None:
        key, stamp = await apikeys.verify_key_and_stamp_async(reads, credentials.credentials, wanted)
        if key is None:
            raise _invalid_key()
        principal = Principal(owner=key.owner, key_id=key.id)
    else:
        principal, stamp = await anyio.to_thread.run_sync(
            _read_in_thread, request, credentials, wanted, limiter=_guard_threads()
        )
    if job_id is not None:
        if stamp is None or stamp.owner != principal.owner:
            raise NotFound(f"job {job_id!r} does not exist")
        request.state.job_stamp = stamp
    request.state.principal = principal


def _read_in_thread(
    request: Request, credentials: HTTPAuthorizationCredentials | None, job_id: str | None
) -> tuple[Principal, repository.JobStamp | None]:
    settings: Settings = request.app.state.settings
    with request.app.state.sessionmaker() as session:
        # A read-only step: no transaction (no BEGIN and COMMIT round trips around its one query).
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        return _principal_and_stamp(request, session, settings, credentials, job_id)


# At most GUARD_CONCURRENCY guards read in the thread pool at once (the others wait in the event
# loop, holding no thread and no connection): with 200 concurrent polls, 200 threads contending for
# the GIL and for the database pool's 15 connections cost three times the CPU per request of 4
# threads taking turns, and served fewer requests than 4 or 8 (benchmarks/load.py, 200 pollers).
GUARD_CONCURRENCY = 4
# One limiter per event loop (a test client runs each in its own).
_GUARD_THREADS: RunVar[anyio.CapacityLimiter] = RunVar("prunesearch_guard_threads")


def _guard_threads() -> anyio.CapacityLimiter:
    try:
        return _GUARD_THREADS.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(GUARD_CONCURRENCY)
        _GUARD_THREADS.set(limiter)
        return limiter


async def _current_principal(request: Request) -> Principal:
    return polled_principal(request)


def polled_principal(request: Request) -> Principal:
    """The caller ``API_GUARDS`` found for this request."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # a route outside API_GUARDS: refuse rather than guess
        raise Unauthorized(
            "this route is not behind the API's authentication", headers={"WWW-Authenticate": _CHALLENGE}
        )
    return principal


def _release_connection(session: Session) -> None:
    # FastAPI runs each sync dependency and the route in separate thread-pool hops. A connection
    # kept between hops is held by a request that has no thread, while threads wait for
    # connections: under load, a deadlock until the pool times out. Read-only work done, hand the
    # connection back (commit keeps the loaded rows usable; expire_on_commit is off).
    session.commit()


def _principal_and_stamp(
    request: Request,
    session: Session,
    settings: Settings,
    credentials: HTTPAuthorizationCredentials | None,
    job_id: str | None,
) -> tuple[Principal, repository.JobStamp | None]:
    """The caller and the stamp of job ``job_id`` (``None`` if none asked or no such job): one read
    for a caller with a key, who is every caller on a server that has keys."""
    if credentials is not None:
        key, stamp = apikeys.verify_key_and_stamp(session, credentials.credentials, job_id)
        if key is None:
            raise _invalid_key()
        return Principal(owner=key.owner, key_id=key.id), stamp
    principal = _principal(request, session, settings, None)
    return principal, repository.job_stamp(session, job_id) if job_id is not None else None


def _invalid_key() -> Unauthorized:
    return Unauthorized(
        "the API key is unknown, malformed or revoked",
        headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
    )


def _principal(
    request: Request, session: Session, settings: Settings, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    if credentials is not None:
        key = apikeys.verify_key(session, credentials.credentials)
        if key is None:
            raise _invalid_key()
        return Principal(owner=key.owner, key_id=key.id)
    if apikeys.any_active_key(session):
        raise Unauthorized(
            "this server requires an API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    if not settings.allow_anonymous and not _arrived_on_loopback(request):
        raise Unauthorized(
            "this server has no API keys, so it answers anonymous requests on loopback only; "
            "the operator creates keys with `prunesearch keys create OWNER`",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    return ANONYMOUS


def authorize_metrics(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """``GET /metrics``: the metrics token or any active API key; without either, the anonymous rule.

    The anonymous rule is /v1's: no active key, and a loopback connection (or ``allow_anonymous``).
    A separate token lets Prometheus scrape without holding a key that can submit and read jobs.
    """
    try:
        token = settings.metrics_token
        presented = credentials.credentials.encode() if credentials is not None else None
        if (
            presented is not None
            and token is not None
            and hmac.compare_digest(presented, token.get_secret_value().encode())
        ):
            return
        _principal(request, session, settings, credentials)
    finally:
        _release_connection(session)


# The caller, as ``API_GUARDS`` (which run first: router dependencies precede the route's) found it.
PrincipalDep = Annotated[Principal, Depends(_current_principal)]


def require_owned_job(session: Session, job_id: str, principal: Principal) -> Job:
    """The job if ``principal`` owns it; ``NotFound`` alike for a missing job and someone else's."""
    job = repository.get_job(session, job_id) if _JOB_ID.fullmatch(job_id) else None
    if job is None or job.owner != principal.owner:
        raise NotFound(f"job {job_id!r} does not exist")
    return job


def owned_stamp(request: Request, job_id: str, principal: Principal) -> repository.JobStamp:
    """The stamp ``API_GUARDS`` read for this request's job, checked again against ``principal``.

    Reads nothing (``async`` routes call it in the event loop); a route the guard did not run for
    is refused rather than answered unchecked.
    """
    stamp: repository.JobStamp | None = getattr(request.state, "job_stamp", None)
    if stamp is None or request.path_params.get("job_id") != job_id:
        raise Unauthorized(
            "this route is not behind the API's authentication", headers={"WWW-Authenticate": _CHALLENGE}
        )
    if stamp.owner != principal.owner:
        raise NotFound(f"job {job_id!r} does not exist")
    return stamp


# Include every /v1 router with ``dependencies=API_GUARDS, responses=GUARDED_RESPONSES``: the
# second documents the 401 the first can answer, so the published schema stays true. (A route
# with a {job_id} documents its 404 itself.)
API_GUARDS: list[DependsParam] = [Depends(_authorize)]
GUARDED_RESPONSES: dict[int | str, dict[str, Any]] = problem_responses(401)


def check_bind(settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Refuse to serve a network without keys, unless the operator said so (``allow_anonymous``)."""
    if is_loopback(settings.host) or settings.allow_anonymous:
        return
    try:
        with sessions() as session:
            has_keys = apikeys.any_active_key(session)
    except Exception as error:
        raise RuntimeError(f"refusing to start on {settings.host}: cannot check for API keys ({error})") from error
    if not has_keys:
        raise RuntimeError(
            f"refusing to start on {settings.host} without API keys: anyone who can reach it could submit "
            "and read jobs. Create a key (`prunesearch keys create OWNER`), bind to 127.0.0.1, or set "
            "PRUNESEARCH_ALLOW_ANONYMOUS=true for a network you trust."
        )


def install_auth(app: FastAPI) -> None:
    """Run ``check_bind`` when the app starts, before it accepts a connection."""
    inner: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        try:
            check_bind(app.state.settings, app.state.sessionmaker)
        except RuntimeError as error:
            logger.error("%s", error)
            raise
        async with inner(asgi_app) as state:
            yield state

    app.router.lifespan_context = lifespan
