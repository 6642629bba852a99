"""Run one job: claim it, search, record every trial as it finishes, verify, finish.

The claim is a guarded UPDATE, so a redelivered task cannot run a job twice; the Optuna study is
named after the job and opened with ``load_if_exists``, so a reclaimed job resumes where its
previous worker stopped instead of starting over.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from service import repository
from service.db import session_scope
from service.limits import check_local_paths
from service.repository import TrialRecord
from service.settings import Settings
from service.states import JobStatus
from workers import reaper, runtime

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from search.loading import ModelCache
    from search.study import TrialInfo

log = logging.getLogger(__name__)


def study_name(job_id: str) -> str:
    return f"job-{job_id}"


def run_job(job_id: str, *, settings: Settings, sessions: sessionmaker[Session], models: ModelCache) -> str:
    """Returns what happened, for the task's log line: ``succeeded``, ``failed``, ``skipped``, ..."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with session_scope(sessions) as session:
        claimed = repository.claim_job(session, job_id, worker=worker, stale_after_s=settings.job_stale_after_s)
        job = repository.get_job(session, job_id)
        spec_data = job.spec if job is not None else None
        owner = job.owner if job is not None else None
    if not claimed or spec_data is None:
        # Unknown, cancelled while queued, finished, or alive on another worker: nothing to do.
        log.info("job %s not claimed (status %s)", job_id, job.status if job is not None else "missing")
        return "skipped"

    log.info("job %s claimed by %s", job_id, worker)
    with _heartbeat(sessions, job_id, settings.job_heartbeat_s):
        try:
            # Recovery (issue 7): a dropped database connection resumes the search instead of failing it.
            status, best = runtime.resume_after_db_loss(
                lambda: _search(job_id, spec_data, owner, settings=settings, sessions=sessions, models=models),
                settings=settings,
                job_id=job_id,
            )
        except Exception as error:
            log.exception("job %s failed", job_id)
            with session_scope(sessions) as session:
                repository.finish_job(session, job_id, JobStatus.FAILED, error=_describe(error))
            return "failed"
    with session_scope(sessions) as session:
        repository.finish_job(session, job_id, status, best=best)
    log.info("job %s %s", job_id, status.value)
    return status.value


def _search(
    job_id: str,
    spec_data: dict[str, Any],
    owner: str | None,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    models: ModelCache,
) -> tuple[JobStatus, dict[str, Any] | None]:
    from search.proxies import MetaNetStore
    from search.spec import JobSpec
    from search.study import make_storage, prepare, run_search

    spec = JobSpec.model_validate(spec_data)
    # Checked again where the files are opened: a hub-style id can name a folder relative to the
    # worker's working directory, which the API could not see.
    check_local_paths(spec, settings, owner)
    loaded = models.get(spec.model, spec.revision, device=settings.device)
    context = prepare(loaded, spec)
    recorder = _TrialRecorder(sessions, job_id)

    def cancel_requested() -> bool:
        with session_scope(sessions) as session:
            return repository.is_cancel_requested(session, job_id)

    storage = make_storage(
        settings.optuna_storage_url,
        heartbeat_interval=settings.trial_heartbeat_s,
        grace_period=settings.trial_grace_s,
        max_retry=settings.trial_max_retry,
    )
    # Recovery (issue 7): a resumed job first fails and retries the trials its dead worker left running.
    reaper.fail_orphaned_trials(storage, study_name(job_id), grace_s=settings.trial_grace_s)
    result = run_search(
        context,
        study_name=study_name(job_id),
        storage=storage,
        callbacks=[recorder],
        should_stop=cancel_requested,
        # The meta-network proxy learns from every job's audited candidates, kept with the service's data.
        metanet_store=MetaNetStore(settings.data_dir / "metanet"),
    )
    with session_scope(sessions) as session:
        # Trials finished by an earlier attempt of this job are in the study; make sure they are here too.
        for trial in result.trials:
            if trial.state in ("running", "waiting"):
                continue  # another worker's trial in flight, or a seed that never ran (cancelled)
            repository.record_trial(session, job_id, _record(trial))
        for number, verification in result.verified.items():
            repository.record_verification(session, job_id, number, verification.to_dict())
    if not result.stopped:
        from workers.exports import report

        job_report = report(job_id, context, result, settings=settings)
        with session_scope(sessions) as session:
            repository.set_report(session, job_id, job_report)
    return (JobStatus.CANCELLED if result.stopped else JobStatus.SUCCEEDED), result.best


class _TrialRecorder:
    """Optuna callback: write each finished trial, and the best so far, as soon as it finishes."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.best_value = -math.inf

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from search.study import best_entry, describe_trial

        info = describe_trial(trial)
        with session_scope(self.sessions) as session:
            repository.record_trial(session, self.job_id, _record(info))
            if info.value is not None and info.value > self.best_value:
                self.best_value = info.value
                repository.set_best(session, self.job_id, best_entry(info, verified=None))


def _record(trial: TrialInfo) -> TrialRecord:
    return TrialRecord(
        number=trial.number,
        state=trial.state,
        origin=trial.origin,
        arch=trial.arch,
        param_count=trial.param_count,
        param_ratio=trial.param_ratio,
        value=trial.value,
        values=trial.values,
        scores=trial.scores,
        duration_s=trial.duration_s,
        timings=trial.timings,
        error=trial.error,
    )


@contextmanager
def _heartbeat(sessions: sessionmaker[Session], job_id: str, interval_s: float) -> Iterator[None]:
    """Keep ``heartbeat_at`` fresh while the job runs (loading a large model takes minutes), so no
    other worker reclaims a job that is alive."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                with session_scope(sessions) as session:
                    repository.heartbeat(session, job_id)
            except Exception:  # a missed beat is retried on the next tick; the job must go on
                log.warning("heartbeat of job %s failed", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _describe(error: Exception) -> str:
    from search.errors import SearchError

    if isinstance(error, SearchError):
        return str(error)
    return f"{type(error).__name__}: {error}"
