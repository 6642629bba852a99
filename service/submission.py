"""Accepting a job: validate, honour the idempotency key, insert, commit, then enqueue.

Enqueueing happens after the commit so the worker always finds the row; if the broker refuses
the task the row is deleted again, so a failed submission leaves nothing behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from search.spec import JobSpec, check_job
from service import repository
from service.admission import check_local_paths, check_owner_quota, check_spec_limits
from service.broker import enqueue_job
from service.errors import InvalidRequest, Unavailable
from service.models import Job
from service.notify.urls import notify_target
from service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False when an earlier submission with the same Idempotency-Key is returned


def submit_job(
    session: Session,
    celery_app: Celery,
    settings: Settings,
    spec: JobSpec,
    *,
    idempotency_key: str | None = None,
    owner: str | None = None,
    key_id: str | None = None,
    notify_url: str | None = None,
) -> Submission:
    """Create and enqueue a job for ``owner`` (``None``: anonymous), or return the one an earlier
    request of the same owner with this key created.

    Raises ``search.errors.InvalidJobSpec`` (the model or budget cannot work), ``InvalidRequest``
    (a reused key with another body), ``LimitExceeded`` / ``PathNotAllowed`` / ``TooManyRequests``
    (``service.admission``), ``NotifyUrlRefused`` (``notify_url``: ``service.notify.urls``) and
    ``Unavailable`` (broker down). ``key_id`` is the caller's API key, whose secret signs the events.
    """
    spec_dict = spec.model_dump(mode="json")
    scoped_key: str | None = None
    if idempotency_key is not None:
        scoped_key = scope_idempotency_key(owner, idempotency_key)
        existing = _replay(session, scoped_key, idempotency_key, spec_dict, notify_url)
        if existing is not None:
            return Submission(existing, created=False)
    _admit(session, settings, spec, owner)
    notify = notify_target(notify_url, key_id=key_id, settings=settings) if notify_url is not None else None
    job = repository.create_job(
        session,
        spec=spec_dict,
        model=spec.model,
        trials_total=spec.n_trials,
        owner=owner,
        idempotency_key=scoped_key,
        notify=notify,
    )
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its job.
        session.rollback()
        if idempotency_key is None or scoped_key is None:
            raise
        existing = _replay(session, scoped_key, idempotency_key, spec_dict, notify_url)
        if existing is None:
            raise
        return Submission(existing, created=False)
    _enqueue_or_withdraw(session, celery_app, job.id)
    return Submission(job, created=True)


def _admit(session: Session, settings: Settings, spec: JobSpec, owner: str | None) -> None:
    """Every check before the row is written; ``service.admission``'s first, then the library's."""
    check_spec_limits(spec, settings)
    # Before check_job, which reads the model folder: a refused path is never probed.
    check_local_paths(spec, settings, owner)
    check_owner_quota(session, owner, settings)
    try:
        check_job(spec)
    except OSError as error:  # a path the OS refuses outright (too long, a component too long, ...)
        raise InvalidRequest(f"cannot read model or calibration path: {error.strerror}") from error


def _enqueue_or_withdraw(session: Session, celery_app: Celery, job_id: str) -> None:
    """Send the job's task; if the broker refuses it, delete the committed row and answer 503."""
    try:
        enqueue_job(celery_app, job_id)
    except Exception as error:
        logger.warning("enqueue of job %s failed, deleting it: %s", job_id, error)
        repository.delete_job(session, job_id)
        session.commit()
        raise Unavailable("the task queue is unreachable; the job was not created, retry later") from error


def scope_idempotency_key(owner: str | None, key: str) -> str:
    """The stored form of a client's key: one owner's keys never match another owner's jobs."""
    return f"{owner or ''}/{key}"


def _replay(
    session: Session, scoped_key: str, key: str, spec_dict: dict[str, object], notify_url: str | None
) -> Job | None:
    existing = repository.find_job_by_idempotency_key(session, scoped_key)
    if existing is not None and (existing.spec != spec_dict or (existing.notify or {}).get("url") != notify_url):
        # draft-ietf-httpapi-idempotency-key-header: a reused key with another payload is a 422.
        raise InvalidRequest(f"Idempotency-Key {key!r} was already used for a different job specification")
    return existing
