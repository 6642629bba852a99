"""Run one job: claim it, search, record every trial as it finishes, verify, finish.

The claim is a guarded UPDATE, so a redelivered task cannot run a job twice; the Optuna study is
named after the job and opened with ``load_if_exists``, so a reclaimed job resumes where its
previous worker stopped instead of starting over.

Several workers serve one job: once the study is ready, the claiming worker (the coordinator)
enqueues ``evaluate_chunk`` tasks of ``chunk_trials`` trials each. An idle worker that takes one
runs trials of the same study until the job has its ``n_trials`` (counted over every worker) or the
chunk is done; the storage gives each waiting seed to one worker and the sampler sees every running
trial. The coordinator waits for the helpers' trials before it verifies. A chunk that arrives after
its job finished, or a redelivered one, finds nothing to do.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from service import repository
from service.db import session_scope
from service.states import JobStatus
from workers import reaper, runtime
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from search.candidates import SearchContext
    from search.loading import ModelCache
    from search.recovery import RecoveryOutcome
    from search.results import BestEntry, SearchResult

log = logging.getLogger(__name__)


def study_name(job_id: str) -> str:
    return f"job-{job_id}"


def run_job(job_id: str, *, settings: WorkerSettings, sessions: sessionmaker[Session], models: ModelCache) -> str:
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
            _notify(sessions, job_id)
            return "failed"
    with session_scope(sessions) as session:
        repository.finish_job(session, job_id, status, best=best)
    _notify(sessions, job_id)
    log.info("job %s %s", job_id, status.value)
    return status.value


def _notify(sessions: sessionmaker[Session], job_id: str) -> None:
    """Send the webhook delivery the job's end opened (committed by now); the POST is another task's."""
    from service.notify.dispatch import send_new_deliveries
    from workers.celery_app import app

    with sessions() as session:
        send_new_deliveries(session, app, job_id)


def _search(
    job_id: str,
    spec_data: dict[str, Any],
    owner: str | None,
    *,
    settings: WorkerSettings,
    sessions: sessionmaker[Session],
    models: ModelCache,
) -> tuple[JobStatus, BestEntry | None]:
    from search import MetaNetStore, SearchHooks, run_search

    context = runtime.prepare_spec(spec_data, owner, settings=settings, models=models)
    storage = _storage(settings)
    # Recovery (issue 7): a resumed job first fails and retries the trials its dead worker left running.
    reaper.fail_orphaned_trials(storage, study_name(job_id), grace_s=settings.trial_grace_s)
    result = run_search(
        context,
        study_name=study_name(job_id),
        storage=storage,
        hooks=SearchHooks(
            on_trial=[TrialRecorder(sessions, job_id)],
            should_stop=lambda: _cancel_requested(sessions, job_id),
            on_primed=lambda remaining: _offer_chunks(job_id, remaining, settings),
        ),
        # The meta-network proxy learns from every job's audited candidates, kept with the service's data.
        metanet_store=MetaNetStore(settings.data_dir / "metanet"),
        batch=settings.trial_batch,
    )
    with session_scope(sessions) as session:
        # Trials finished by an earlier attempt of this job are in the study; make sure they are here too.
        for trial in result.trials:
            if trial.state in ("running", "waiting"):
                continue  # another worker's trial in flight, or a seed that never ran (cancelled)
            repository.record_trial(session, job_id, trial)
        for number, verification in result.verified.items():
            repository.record_verification(session, job_id, number, verification)
    if result.stopped:
        return JobStatus.CANCELLED, result.best
    return _finish(job_id, context, result, settings=settings, sessions=sessions)


def _finish(
    job_id: str,
    context: SearchContext,
    result: SearchResult,
    *,
    settings: WorkerSettings,
    sessions: sessionmaker[Session],
) -> tuple[JobStatus, BestEntry | None]:
    """Recover the finalists if the job asks (a resumed job restarts recovery from the verified
    finalists), export the best (the recovered winner), write the report."""
    from workers.exports import report

    recovery = _recover(job_id, context, result, sessions) if context.spec.recovery is not None else None
    if recovery is not None and recovery.stopped:
        return JobStatus.CANCELLED, result.best
    best = result.best
    if recovery is not None and recovery.winner is not None:
        from search.results import best_entry

        winner = next(t for t in result.trials if t.number == recovery.winner.trial_number)
        after = next(f.after for f in recovery.report.finalists if f.trial_number == winner.number)
        # The exported model is the recovered winner: its figures are the ones after recovery.
        best = best_entry(winner, verified=None).model_copy(update={"verified": after})
    job_report = report(job_id, context, result, settings=settings, recovery=recovery)
    with session_scope(sessions) as session:
        repository.set_report(session, job_id, job_report)
    return JobStatus.SUCCEEDED, best


def _recover(
    job_id: str, context: SearchContext, result: SearchResult, sessions: sessionmaker[Session]
) -> RecoveryOutcome:
    from search import SearchHooks
    from search.recovery import recover

    return recover(
        context,
        result,
        hooks=SearchHooks(
            # Asked every optimizer step: read the cancel flag at most once a second.
            should_stop=_Throttled(lambda: _cancel_requested(sessions, job_id), every_s=1.0),
            on_recover=_PhaseRecorder(sessions, job_id, "recovery"),
        ),
    )


def evaluate_chunk(
    job_id: str, *, settings: WorkerSettings, sessions: sessionmaker[Session], models: ModelCache
) -> str:
    """Help a running job with up to ``chunk_trials`` trials; returns what happened, for the log."""
    from search import MetaNetStore, SearchHooks
    from search.coordination import search_chunk

    with session_scope(sessions) as session:
        job = repository.get_job(session, job_id)
        if job is None or job.status != JobStatus.RUNNING.value or job.cancel_requested:
            return "skipped"
        spec_data, owner = job.spec, job.owner
    context = runtime.prepare_spec(spec_data, owner, settings=settings, models=models)
    ran = search_chunk(
        context,
        study_name=study_name(job_id),
        storage=_storage(settings),
        max_trials=max(settings.chunk_trials, 1),
        hooks=SearchHooks(
            on_trial=[TrialRecorder(sessions, job_id)], should_stop=lambda: not _still_running(sessions, job_id)
        ),
        metanet_store=MetaNetStore(settings.data_dir / "metanet"),
        batch=settings.trial_batch,
    )
    log.info("job %s: this worker ran %d trials of a chunk", job_id, ran)
    return f"ran {ran} trials"


def _offer_chunks(job_id: str, remaining: int, settings: WorkerSettings) -> None:
    """Enqueue chunks for idle workers: all the remaining trials but the coordinator's own first chunk."""
    if settings.chunk_trials <= 0:
        return
    from service.broker import EVALUATE_CHUNK_TASK
    from workers.celery_app import app

    for _ in range(math.ceil(remaining / settings.chunk_trials) - 1):
        app.send_task(EVALUATE_CHUNK_TASK, args=[job_id])


def _storage(settings: WorkerSettings) -> optuna.storages.BaseStorage:
    from studystore import make_storage

    return make_storage(
        settings.optuna_storage_url,
        heartbeat_interval=settings.trial_heartbeat_s,
        grace_period=settings.trial_grace_s,
        max_retry=settings.trial_max_retry,
    )


def _cancel_requested(sessions: sessionmaker[Session], job_id: str) -> bool:
    with session_scope(sessions) as session:
        return repository.is_cancel_requested(session, job_id)


def _still_running(sessions: sessionmaker[Session], job_id: str) -> bool:
    with session_scope(sessions) as session:
        job = repository.get_job(session, job_id)
        return job is not None and job.status == JobStatus.RUNNING.value and not job.cancel_requested


class _Throttled:
    """A yes/no question asked at most every ``every_s`` seconds; between asks, the last answer."""

    def __init__(self, ask: Callable[[], bool], *, every_s: float) -> None:
        self.ask, self.every_s = ask, every_s
        self.answer, self.asked_at = False, -math.inf

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.asked_at >= self.every_s:
            self.answer, self.asked_at = self.ask(), now
        return self.answer


class _PhaseRecorder:
    """``on_recover(done, total)``: the job's phase in its row, written at most once a second and at the end."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, name: str, *, every_s: float = 1.0) -> None:
        self.sessions, self.job_id, self.name, self.every_s = sessions, job_id, name, every_s
        self.written_at = -math.inf

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.written_at < self.every_s:
            return
        self.written_at = now
        with session_scope(self.sessions) as session:
            repository.set_phase(session, self.job_id, self.name, done, total)


class TrialRecorder:
    """Optuna callback: write each finished trial, and the best so far, as soon as it finishes."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.best_here: float | None = None  # the best score this process recorded

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from search.results import best_entry, describe_trial

        info = describe_trial(trial)
        improves = info.value is not None and (self.best_here is None or info.value > self.best_here)
        with session_scope(self.sessions) as session:
            repository.record_trial(session, self.job_id, info)
            if not improves:
                return  # not better than this process's best, so not better than the job's
            self.best_here = info.value
            # Other workers of the job record their trials too: compare with the job's best, not ours.
            best = repository.best_score(session, self.job_id)
            if best is None or info.value > best:
                repository.set_best(session, self.job_id, best_entry(info, verified=None))


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
