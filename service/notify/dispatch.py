"""Sending the delivery tasks of a job's events, after the transaction that opened them commits."""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy.orm import Session

from service import repository
from service.broker import enqueue_delivery

__all__ = ["send_new_deliveries"]

log = logging.getLogger(__name__)


def send_new_deliveries(session: Session, celery_app: Celery, job_id: str) -> list[int]:
    """Enqueue the job's deliveries that no attempt has claimed yet; returns their ids.

    Never raises: the job has already ended, and a broker that refuses the task must not turn that
    into an error. A second send of the same delivery is harmless (each attempt is claimed).
    """
    try:
        ids = repository.unsent_deliveries(session, job_id)
    except Exception:
        log.warning("job %s: could not read its webhook deliveries", job_id, exc_info=True)
        return []
    sent = []
    for delivery_id in ids:
        try:
            enqueue_delivery(celery_app, delivery_id)
        except Exception as error:
            log.warning("job %s: webhook delivery %s not enqueued: %s", job_id, delivery_id, error)
            continue
        sent.append(delivery_id)
    return sent
