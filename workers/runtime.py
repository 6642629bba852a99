"""Per-process resources of a worker: database sessions and the loaded model."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.admission import check_local_paths
from service.db import make_engine, make_sessionmaker
from workers.settings import WorkerSettings, get_worker_settings

if TYPE_CHECKING:
    from search.candidates import SearchContext
    from search.loading import ModelCache

log = logging.getLogger(__name__)
T = TypeVar("T")


@lru_cache(maxsize=1)
def sessions() -> sessionmaker[Session]:
    return make_sessionmaker(worker_engine(get_worker_settings().database_url))


def worker_engine(url: str) -> Engine:
    """The worker's engine, which writes every trial's ``trial_result`` row as the trial ends. Its
    commits do not wait for the disk, as the study's do not: a crash of the database server (or, on
    SQLite, of the machine) may lose the last fraction of a second of them, which the job's
    recovery redoes (the reaper requeues a job whose heartbeat is lost, and the worker writes every
    trial again from the study at the end of the job). On PostgreSQL, where each statement is a
    round trip, a pooled connection is checked by a look at its socket, as the study's are
    (``studystore.postgres.watch_connections``), instead of a ping at every checkout."""
    if make_url(url).get_backend_name() != "postgresql":
        return make_engine(url, synchronous_commit=False)
    # studystore loads Optuna, which the worker's parent process never needs (as ``jobs._storage``).
    from studystore.postgres import watch_connections

    engine = make_engine(url, pre_ping=False, synchronous_commit=False)
    watch_connections(engine)
    return engine


def prepare_spec(
    spec_data: dict[str, Any], owner: str | None, *, settings: WorkerSettings, models: ModelCache
) -> SearchContext:
    """A job's stored spec, ready to search or export: its paths checked again where the files are
    opened (a hub-style id can name a folder relative to the worker's working directory, which the
    API could not see, and roots may have changed since submission), then ``search.prepare_job``
    on this process's model cache."""
    from search import JobSpec, prepare_job

    spec = JobSpec.model_validate(spec_data)
    check_local_paths(spec, settings, owner)
    return prepare_job(spec, models=models, device=settings.device, max_memory=settings.max_memory)


@lru_cache(maxsize=1)
def models() -> ModelCache:
    from search.loading import ModelCache  # torch is imported here, in the worker child, not before fork

    # Artifacts computed from a model's weights (PruneNet's policy and tables) outlive the process.
    settings = get_worker_settings()
    return ModelCache(artifacts=settings.artifact_cache_dir, offload_folder=settings.offload_dir)


def reset() -> None:
    if sessions.cache_info().currsize:
        sessions().kw["bind"].dispose(close=False)
    sessions.cache_clear()


def is_transient_db_error(error: BaseException) -> bool:
    """Whether ``error`` is a lost or refused database connection (restart, failover, killed backend).

    Looks down the cause chain: Optuna wraps SQLAlchemy's errors in its ``StorageInternalError``.
    Such a job is worth resuming: the pools ping before reuse, so the next attempt reconnects.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OperationalError | InterfaceError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def resume_after_db_loss(run: Callable[[], T], *, settings: WorkerSettings, job_id: str) -> T:
    """``run()``, called again (up to ``settings.db_retry_attempts`` times in all) when it fails on a
    lost database connection.

    ``run`` must be resumable: a job's search reopens its Optuna study and keeps the finished trials.
    Before resuming it waits out the trial grace period, so the trial that was in flight when the
    connection dropped is stale by then: the resumed study fails and retries it instead of leaving
    a zombie ``RUNNING`` trial behind.
    """
    attempts = settings.db_retry_attempts
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except Exception as error:
            if attempt >= attempts or not is_transient_db_error(error):
                raise
            delay = max(min(2.0**attempt, 30.0), settings.trial_grace_s + 1.0)
            log.warning(
                "job %s lost the database (%s); resuming in %.0f s (%d/%d)", job_id, error, delay, attempt, attempts
            )
            time.sleep(delay)
    raise AssertionError("unreachable")
