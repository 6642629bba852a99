"""The reaper: re-send the tasks of jobs that no worker is serving.

Celery alone recovers a dead worker's task only when the Redis visibility timeout expires (it must
outlast the longest job, so: days), and not at all if the broker lost the message. The job row
knows better: a running job whose heartbeat stopped has lost its worker, and a job queued for
long may have lost its message. Each worker runs a reaper thread in its main process (never in
the pool child that runs jobs) at start-up and then every ``reaper_interval_s``. It marks such
jobs in one guarded UPDATE (``repository.claim_orphans``) and re-sends their ``run_job`` task;
the claim accepts a stale running job, and the job's Optuna study resumes where it stopped.

A duplicate message is harmless: the claim is guarded, so the second one finds the job taken or
finished and does nothing. ``fail_orphaned_trials`` does the same for the trials inside a study.
"""

from __future__ import annotations

import logging
import threading
import warnings
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from celery import Celery
from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session, sessionmaker

from service import repository
from service.broker import enqueue_job, make_celery
from service.db import make_engine, make_sessionmaker
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

log = logging.getLogger(__name__)


def reap_once(sessions: sessionmaker[Session], celery_app: Celery, settings: WorkerSettings) -> list[str]:
    """One pass: the ids of the jobs whose tasks were re-sent."""
    with sessions() as session:
        orphans = repository.claim_orphans(
            session, stale_after_s=settings.job_stale_after_s, queued_after_s=settings.requeue_queued_after_s
        )
    sent = []
    for job_id in orphans:
        try:
            enqueue_job(celery_app, job_id)
        except Exception as error:  # broker down: the mark expires and the next period retries
            log.warning("reaper: could not re-send job %s: %s", job_id, error)
            continue
        log.warning("reaper: re-sent job %s (its worker stopped, or its message was lost)", job_id)
        sent.append(job_id)
    return sent


class Reaper:
    """A daemon thread running ``reap_once`` now and every ``settings.reaper_interval_s``."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        # Its own pool and broker connection: the pool children never share them.
        self._engine = make_engine(settings.database_url)
        self._sessions = make_sessionmaker(self._engine)
        self._celery = make_celery(settings, "prunesearch-reaper")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prunesearch-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._celery.close()
        self._engine.dispose()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the inherited pool without closing the parent's connections."""
        self._engine.dispose(close=False)

    def _run(self) -> None:
        while True:
            try:
                reap_once(self._sessions, self._celery, self.settings)
            except Exception as error:  # database down: try again next period; never kill the worker
                log.warning("reaper: pass failed: %s", error)
            if self._stop.wait(self.settings.reaper_interval_s):
                return


def fail_orphaned_trials(storage: RDBStorage, study_name: str, *, grace_s: float) -> list[int]:
    """Fail, and retry, the trials of ``study_name`` that a dead worker left ``RUNNING``.

    Optuna fails a trial whose heartbeat went stale, at the start of each later trial; but a trial
    whose worker died before its first heartbeat has no heartbeat row and is skipped forever, a
    zombie. Here such a trial's start time is its last sign of life: older than the grace period,
    it is dead (a live trial writes its first heartbeat within milliseconds). Returns the numbers
    of the trials failed; their retries are queued through the storage's stale-trial callback.
    """
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # first attempt of the job: no study yet
        return []
    with warnings.catch_warnings():  # experimental since Optuna 2.9, and what study.optimize itself calls
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # the ones with a stale heartbeat, as Optuna does
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    with storage.engine.connect() as connection:
        beating = {
            row[0]
            for row in connection.execute(
                text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": [trial._trial_id for trial in running]},
            )
        }
    # Optuna stamps datetime_start with the worker's naive local time.
    cutoff = datetime.now() - timedelta(seconds=grace_s)
    failed = []
    callback = storage.get_heartbeat_stale_trial_callback()
    for trial in running:
        started = trial.datetime_start
        if trial._trial_id in beating or started is None or started > cutoff:
            continue
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        log.warning("trial %d of %s died before its first heartbeat; failed and retried", trial.number, study_name)
        failed.append(trial.number)
        if callback is not None:
            callback(study, storage.get_trial(trial._trial_id))
    return failed
