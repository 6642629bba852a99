"""Resuming a cancelled or failed job: check, reopen its row, commit, then enqueue.

The search itself is the worker's ordinary path: ``run_job`` claims the queued job, re-reads its
(updated) spec and ``run_search`` opens the job's study with ``load_if_exists``, so every trial is
kept and only the trials still missing under ``n_trials`` run; verification and the report are
computed again at the end from all of the study's trials. The ``n_trials`` rule is the library's
(``search.resume.resumed_spec``), shared with ``prunesearch search --study-name``.
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy.orm import Session

from search.resume import resumed_spec
from search.spec import JobSpec
from service import repository
from service.admission import check_owner_quota, check_spec_limits
from service.broker import enqueue_job
from service.models import Job
from service.settings import Settings
from service.states import JobStatus

logger = logging.getLogger(__name__)


def resume_job(
    session: Session, celery_app: Celery, settings: Settings, job_id: str, *, n_trials: int | None = None
) -> Job:
    """Queue ``job_id`` again to continue its study up to ``n_trials`` (default: the job's own).

    Raises ``NotFound``, ``JobNotResumable`` (409: queued, running or succeeded),
    ``search.errors.InvalidJobSpec`` naming ``n_trials`` (422: below the trials already complete),
    ``LimitExceeded`` (422: above ``max_trials``) and ``TooManyActiveJobs`` (429), as a submission would.
    """
    job = repository.require_job(session, job_id)
    if JobStatus(job.status) not in repository.RESUMABLE:
        raise repository.not_resumable(job)
    complete = repository.count_complete_trials(session, job_id)
    spec = resumed_spec(JobSpec.model_validate(job.spec), complete=complete, n_trials=n_trials)
    check_spec_limits(spec, settings)
    check_owner_quota(session, job.owner, settings)
    job = repository.reopen_job(session, job_id, spec=spec.model_dump(mode="json"), trials_total=spec.n_trials)
    session.commit()
    try:
        enqueue_job(celery_app, job_id)
    except Exception as error:
        # The row says queued; the reaper re-sends a job queued too long (requeue_queued_after_s).
        logger.warning("enqueue of resumed job %s failed; the reaper will send it again: %s", job_id, error)
    return job
