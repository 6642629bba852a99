"""Deliver one webhook event: claim the attempt, check the URL again, POST the signed body, record.

Runs as the ``deliver_webhook`` task (``workers.tasks``), on the notify queue, after the job has
ended: a slow or failing receiver costs a delivery worker's time, never a job's. The task retries
with Celery's countdown (``webhook_backoff_s``, doubled each time, at most ``webhook_backoff_max_s``)
until ``webhook_retries`` retries have failed, then the delivery is ``failed``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx
from sqlalchemy.orm import Session, sessionmaker

from service import apikeys, repository
from service.db import session_scope
from service.errors import InvalidRequest, NotFound
from service.notify.events import DELIVERY_HEADER, EVENT_HEADER, event_body
from service.notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from service.notify.urls import check_notify_url
from service.settings import Settings

__all__ = ["Attempt", "deliver"]

log = logging.getLogger(__name__)
USER_AGENT = "PruneSearch-Webhooks/1"


@dataclass(frozen=True)
class _Request:
    delivery_id: int
    url: str
    body: bytes
    event: str
    secret: str | None


@dataclass(frozen=True)
class _Answer:
    status_code: int | None  # the receiver's, if it answered
    error: str | None  # why the attempt did not deliver
    retryable: bool = True  # False: refused before sending (address, secret); retrying cannot help

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Attempt:
    """What one call did: ``outcome`` for the log, ``retry_in`` seconds when the task must retry."""

    outcome: str
    retry_in: float | None = None


def deliver(delivery_id: int, *, attempts_before: int, settings: Settings, sessions: sessionmaker[Session]) -> Attempt:
    """Make attempt ``attempts_before + 1`` of the delivery (the task's retry count is ``attempts_before``)."""
    with session_scope(sessions) as session:
        request = _claim(session, delivery_id, attempts_before, settings)
    if request is None:
        return Attempt("skipped")  # delivered, failed, or this attempt taken by a duplicate task
    attempt = attempts_before + 1
    final = attempt > settings.webhook_retries
    answer = _send(request, settings)
    status = "delivered" if answer.delivered else ("failed" if final or not answer.retryable else "pending")
    with session_scope(sessions) as session:
        repository.record_delivery_attempt(
            session, delivery_id, status=status, status_code=answer.status_code, error=answer.error
        )
    log.info("webhook delivery %s (%s) attempt %d: %s", delivery_id, request.event, attempt, answer.error or status)
    if status != "pending":
        return Attempt(status)
    delay = min(settings.webhook_backoff_s * 2 ** (attempt - 1), settings.webhook_backoff_max_s)
    return Attempt("retrying", retry_in=delay)


def _claim(session: Session, delivery_id: int, attempts_before: int, settings: Settings) -> _Request | None:
    delivery = repository.claim_delivery_attempt(session, delivery_id, attempts_before=attempts_before)
    if delivery is None:
        return None
    job = repository.get_job(session, delivery.job_id)
    if job is None or not job.notify:
        return None
    key_id = job.notify.get("key_id")
    secret: str | None
    if key_id is not None:
        try:
            secret = apikeys.webhook_secret(session, key_id)
        except NotFound:  # keys are revoked, not deleted; a row removed by hand leaves nothing to sign with
            secret = None
    else:
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    return _Request(delivery_id, job.notify["url"], event_body(job, delivery, settings), delivery.event, secret)


def _send(request: _Request, settings: Settings) -> _Answer:
    """POST the signed event, unless the URL or the secret is refused now."""
    if request.secret is None:
        return _Answer(None, "refused: no signing secret (its API key is gone, or WEBHOOK_SECRET is unset)", False)
    try:
        check_notify_url(request.url, settings)  # again: the host's addresses may have changed (DNS rebinding)
    except InvalidRequest as error:
        return _Answer(None, f"refused: {error.detail}", False)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: request.event,
        DELIVERY_HEADER: str(request.delivery_id),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(request.secret, timestamp, request.body),
    }
    try:
        with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False) as client:
            response = client.post(request.url, content=request.body, headers=headers)
    except httpx.HTTPError as error:
        return _Answer(None, f"{type(error).__name__}: {error}"[:500])
    code = response.status_code
    return _Answer(code, None if 200 <= code < 300 else f"HTTP {code}")
