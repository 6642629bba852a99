"""Every query on the service's tables, for the API and the worker glue.

Functions take a ``Session`` first and leave committing to the caller, unless their docstring says
otherwise. State transitions are single guarded ``UPDATE ... WHERE status = ...`` statements whose
row count says whether this caller won, so a redelivered task or a double click cannot move a job
twice. Floats and JSON are scrubbed of NaN/inf on the way in (``service.jsonsafe``).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from pydantic import BaseModel
from sqlalchemy import CursorResult, Result, and_, bindparam, func, inspect, literal, null, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from search.results import BestEntry, JobReport, TrialInfo, Verification
from service import cursors
from service.errors import JobNotCancellable, JobNotResumable, NotFound
from service.jsonsafe import scrub
from service.models import Job, TrialResult, UTCDateTime, WebhookDelivery, utcnow
from service.notify.events import event_name
from service.states import COMPLETED_TRIAL_STATES, JobStatus, TrialState

__all__ = [
    "JobStamp",
    "claim_delivery_attempt",
    "claim_job",
    "claim_orphans",
    "count_active_jobs",
    "count_complete_trials",
    "create_job",
    "delete_job",
    "find_job_by_idempotency_key",
    "finish_job",
    "get_job",
    "get_trial",
    "heartbeat",
    "is_cancel_requested",
    "job_stamp",
    "list_complete_trials",
    "list_jobs",
    "list_trials",
    "record_delivery_attempt",
    "record_trial",
    "record_verification",
    "reopen_job",
    "request_cancel",
    "require_job",
    "set_best",
    "set_report",
    "submissions_since",
    "unsent_deliveries",
]


# --- reads ------------------------------------------------------------------------------------


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


@dataclass(frozen=True)
class JobStamp:
    """Who owns a job, and which version of it and its trials is stored: small columns, no JSON.

    Every write that changes what a poll shows (the job's fields, a trial, a verification, a
    webhook delivery) sets ``updated_at``, so an unchanged stamp means unchanged job and trials;
    the counters and status are in it as well, so two writes within one clock tick still differ.
    """

    owner: str | None
    updated_at: datetime
    status: str
    trials_completed: int
    trials_failed: int
    cancel_requested: bool

    def version(self) -> tuple[object, ...]:
        return (
            self.updated_at.isoformat(),
            self.status,
            self.trials_completed,
            self.trials_failed,
            self.cancel_requested,
        )

    @classmethod
    def from_columns(cls, values: Sequence[Any]) -> JobStamp | None:
        """From the values of ``JOB_STAMP_COLUMNS`` in a row (all null: no such job)."""
        return None if values[1] is None else cls(*values)


# Plain table columns (not ORM attributes): a read of them skips the ORM's per-statement work.
_job = Job.__table__.c
JOB_STAMP_COLUMNS = (
    _job.owner,
    _job.updated_at,
    _job.status,
    _job.trials_completed,
    _job.trials_failed,
    _job.cancel_requested,
)


# Built once: the statement's construction would cost more than its run.
_JOB_STAMP = select(*JOB_STAMP_COLUMNS).where(_job.id == bindparam("job_id"))


def job_stamp(session: Session, job_id: str) -> JobStamp | None:
    """The job's ``JobStamp``, or ``None`` if there is no such job. One indexed read of small columns."""
    row = session.connection().execute(_JOB_STAMP, {"job_id": job_id}).one_or_none()
    return None if row is None else JobStamp.from_columns(row)


def require_job(session: Session, job_id: str) -> Job:
    """The job, or ``NotFound`` (404)."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist")
    return job


def find_job_by_idempotency_key(session: Session, key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()


def list_jobs(
    session: Session, *, limit: int, cursor: str | None, status: str | None, owner: str | None = None
) -> tuple[list[Job], str | None]:
    """``owner``'s jobs (``None``: the anonymous ones), newest first, keyset-paginated on (created_at, id).

    Returns the page and the next cursor.
    """
    stmt = select(Job).where(_owned_by(owner)).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if status is not None:
        stmt = stmt.where(Job.status == JobStatus(status).value)
    if cursor is not None:
        created_at, job_id = cursors.decode_job(cursor)
        stmt = stmt.where(or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id)))
    jobs = list(session.scalars(stmt))
    if len(jobs) <= limit:
        return jobs, None
    last = jobs[limit - 1]
    return jobs[:limit], cursors.encode_job(last.created_at, last.id)


def list_trials(
    session: Session, job_id: str, *, limit: int, cursor: str | None
) -> tuple[list[TrialResult], str | None]:
    """Trials of a job by trial number, keyset-paginated. ``NotFound`` if the job does not exist."""
    if session.scalar(select(Job.id).where(Job.id == job_id)) is None:
        raise NotFound(f"job {job_id!r} does not exist")
    stmt = select(TrialResult).where(TrialResult.job_id == job_id).order_by(TrialResult.number).limit(limit + 1)
    if cursor is not None:
        stmt = stmt.where(TrialResult.number > cursors.decode_trial(cursor))
    trials = list(session.scalars(stmt))
    if len(trials) <= limit:
        return trials, None
    return trials[:limit], cursors.encode_trial(trials[limit - 1].number)


def get_trial(session: Session, job_id: str, number: int) -> TrialResult | None:
    return session.scalars(
        select(TrialResult).where(TrialResult.job_id == job_id, TrialResult.number == number)
    ).one_or_none()


def list_complete_trials(session: Session, job_id: str) -> list[TrialResult]:
    """A job's trials in state ``complete``, by number (for the Pareto front). ``NotFound`` if no such job."""
    if session.scalar(select(Job.id).where(Job.id == job_id)) is None:
        raise NotFound(f"job {job_id!r} does not exist")
    stmt = (
        select(TrialResult)
        .where(TrialResult.job_id == job_id, TrialResult.state == TrialState.COMPLETE.value)
        .order_by(TrialResult.number)
    )
    return list(session.scalars(stmt))


def is_cancel_requested(session: Session, job_id: str) -> bool:
    """Whether the worker should stop. A job that no longer exists counts as cancelled."""
    # Select the column, not the entity, so a stale object in the identity map cannot answer.
    flag = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return True if flag is None else bool(flag)


def count_complete_trials(session: Session, job_id: str) -> int:
    """A job's trials in state ``complete`` (not pruned): what its study holds and a resume keeps."""
    stmt = (
        select(func.count())
        .select_from(TrialResult)
        .where(TrialResult.job_id == job_id, TrialResult.state == TrialState.COMPLETE.value)
    )
    return int(session.scalar(stmt) or 0)


def count_active_jobs(session: Session, owner: str | None) -> int:
    """Queued and running jobs of ``owner`` (for the per-key concurrency limit)."""
    active = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
    stmt = select(func.count()).select_from(Job).where(_owned_by(owner), Job.status.in_(active))
    return int(session.scalar(stmt) or 0)


def submissions_since(session: Session, owner: str | None, since: datetime) -> tuple[int, datetime | None]:
    """How many jobs ``owner`` created at or after ``since``, and when the oldest of them was created.

    The job table is the rate limiter's memory: it is shared by every API process and counts only
    submissions that were accepted.
    """
    stmt = select(func.count(), func.min(Job.created_at)).where(
        _owned_by(owner), Job.created_at >= literal(since, UTCDateTime())
    )
    count, oldest = session.execute(stmt).one()
    return int(count or 0), oldest


# --- job lifecycle ------------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    spec: dict[str, Any],
    model: str,
    trials_total: int,
    owner: str | None = None,
    idempotency_key: str | None = None,
    notify: dict[str, Any] | None = None,
) -> Job:
    """Insert a queued job and flush (so its id and timestamps are set); the caller commits.

    ``notify`` (``{"url": ..., "key_id": ...}``) asks for a webhook event when the job ends."""
    now = utcnow()
    job = Job(
        id=uuid.uuid4().hex,
        status=JobStatus.QUEUED.value,
        model=model,
        spec=scrub(spec),
        owner=owner,
        idempotency_key=idempotency_key,
        trials_total=trials_total,
        trials_completed=0,
        trials_failed=0,
        cancel_requested=False,
        attempts=0,
        created_at=now,
        updated_at=now,
        notify=notify,
    )
    session.add(job)
    session.flush()
    return job


def delete_job(session: Session, job_id: str) -> bool:
    """Delete a job and (by cascade) its trials. True if it existed."""
    job = session.get(Job, job_id)
    if job is None:
        return False
    session.delete(job)
    session.flush()
    return True


def request_cancel(session: Session, job_id: str) -> Job:
    """Cancel a queued job at once, or ask a running one to stop. ``JobNotCancellable`` if it ended.

    A queued job cancelled here opens its webhook delivery, like ``finish_job``."""
    now = utcnow()
    if _guarded_update(
        session,
        job_id,
        from_statuses=(JobStatus.QUEUED,),
        status=JobStatus.CANCELLED.value,
        cancel_requested=True,
        finished_at=now,
        updated_at=now,
    ):
        _open_delivery(session, job_id, JobStatus.CANCELLED, now=now)
        return _reload(session, job_id)
    if _guarded_update(session, job_id, from_statuses=(JobStatus.RUNNING,), cancel_requested=True, updated_at=now):
        return _reload(session, job_id)
    job = _reload(session, job_id)
    raise JobNotCancellable(f"job {job_id} is already {job.status}", extensions={"job_status": job.status})


RESUMABLE: tuple[JobStatus, ...] = (JobStatus.CANCELLED, JobStatus.FAILED)


def reopen_job(session: Session, job_id: str, *, spec: dict[str, Any], trials_total: int) -> Job:
    """Put a cancelled or failed job back in the queue with ``spec`` (its ``n_trials`` maybe raised).

    Its error, cancel flag, phase and report are cleared (the worker writes them again from the
    study's trials); its trials and best so far stay. ``JobNotResumable`` (409) if it is not
    cancelled or failed, including when a concurrent resume moved it first."""
    now = utcnow()
    if _guarded_update(
        session,
        job_id,
        from_statuses=RESUMABLE,
        status=JobStatus.QUEUED.value,
        spec=scrub(spec),
        trials_total=trials_total,
        cancel_requested=False,
        error=None,
        phase=null(),
        report=null(),
        finished_at=None,
        # As if the reaper had just sent it: its queued-too-long clock starts now, not at creation.
        requeued_at=now,
        updated_at=now,
    ):
        return _reload(session, job_id)
    raise not_resumable(_reload(session, job_id))


def not_resumable(job: Job) -> JobNotResumable:
    """The 409 for resuming ``job``, saying why its state does not allow it."""
    running = (
        "it is stopping after a cancel; resume it once it is cancelled"
        if job.cancel_requested
        else "it is running; cancel it first to resume it later"
    )
    why = {
        JobStatus.QUEUED.value: "it is queued and will run",
        JobStatus.RUNNING.value: running,
        JobStatus.SUCCEEDED.value: "it succeeded: every trial it asked for is done (submit a new job for more)",
    }.get(job.status, f"it is {job.status}")
    return JobNotResumable(
        f"job {job.id} cannot be resumed: {why}; only cancelled or failed jobs resume",
        extensions={"job_status": job.status},
    )


def claim_job(session: Session, job_id: str, *, worker: str, stale_after_s: int) -> bool:
    """Take a job for ``worker``: a queued one, or a running one whose heartbeat went stale.

    True if this worker got it. Commits itself, so the claim is visible to other workers at once.
    """
    now = utcnow()
    stale_before = now - timedelta(seconds=stale_after_s)
    claimable = or_(
        Job.status == JobStatus.QUEUED.value,
        and_(
            Job.status == JobStatus.RUNNING.value,
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before),
        ),
    )
    stmt = (
        update(Job)
        .where(Job.id == job_id, claimable)
        .values(
            status=JobStatus.RUNNING.value,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, literal(now, UTCDateTime())),
            heartbeat_at=now,
            worker=worker,
            updated_at=now,
        )
    )
    claimed = _rowcount(session.execute(stmt, execution_options={"synchronize_session": False})) == 1
    session.commit()
    _forget(session, job_id)
    return claimed


def claim_orphans(session: Session, *, stale_after_s: float, queued_after_s: float) -> list[str]:
    """Mark and return the jobs no worker is serving, so the caller re-sends their tasks.

    An orphan is a running job whose heartbeat is older than ``stale_after_s`` (its worker died),
    or a job queued for longer than ``queued_after_s`` (its message may have been lost with a
    broker that kept no copy). Each is marked ``requeued_at=now`` in the same guarded UPDATE, so
    concurrent reapers never both take one, and a job is re-sent at most once per period while it
    waits for a free worker. Commits itself.
    """
    now = utcnow()

    def before(seconds: float) -> Any:
        return literal(now - timedelta(seconds=seconds), UTCDateTime())

    stale_running = and_(
        Job.status == JobStatus.RUNNING.value,
        or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < before(stale_after_s)),
        or_(Job.requeued_at.is_(None), Job.requeued_at < before(stale_after_s)),
    )
    waiting_queued = and_(
        Job.status == JobStatus.QUEUED.value,
        func.coalesce(Job.requeued_at, Job.created_at) < before(queued_after_s),
    )
    stmt = update(Job).where(or_(stale_running, waiting_queued)).values(requeued_at=now).returning(Job.id)
    ids = list(session.scalars(stmt, execution_options={"synchronize_session": False}))
    session.commit()
    for job_id in ids:
        _forget(session, job_id)
    return ids


def heartbeat(session: Session, job_id: str) -> None:
    _update_job(session, job_id, heartbeat_at=utcnow())


def best_score(session: Session, job_id: str) -> float | None:
    """The proxy score of the job's best so far (any worker's), without loading the job."""
    best = session.scalar(select(Job.best).where(Job.id == job_id))
    return None if best is None else best.get("score")


def set_best(session: Session, job_id: str, best: BestEntry) -> None:
    _update_job(session, job_id, best=_stored(best), updated_at=utcnow())


def set_phase(session: Session, job_id: str, name: str, done: int, total: int) -> None:
    """Record the job's phase after its trials (``recovery``) and how far it is, for the progress shown."""
    _update_job(session, job_id, phase={"name": name, "done": done, "total": total}, updated_at=utcnow())


def finish_job(
    session: Session,
    job_id: str,
    status: JobStatus,
    *,
    error: str | None = None,
    best: BestEntry | None = None,
) -> bool:
    """Move a running job (or a queued one, to ``failed``) to a terminal state. True if it moved.

    The move opens the job's webhook delivery (if it asked for one) in the same transaction; the
    caller sends it after committing (``service.notify.dispatch``)."""
    status = JobStatus(status)
    if not status.terminal:
        raise ValueError(f"finish_job needs a terminal status, not {status.value!r}")
    from_statuses = (JobStatus.RUNNING, JobStatus.QUEUED) if status is JobStatus.FAILED else (JobStatus.RUNNING,)
    now = utcnow()
    values: dict[str, Any] = {"status": status.value, "finished_at": now, "updated_at": now}
    if error is not None:
        values["error"] = error
    if best is not None:
        values["best"] = _stored(best)
    moved = _guarded_update(session, job_id, from_statuses=from_statuses, **values)
    if moved:
        _open_delivery(session, job_id, status, now=now)
    return moved


# --- webhook deliveries -------------------------------------------------------------------------


def _open_delivery(session: Session, job_id: str, status: JobStatus, *, now: datetime) -> None:
    # Only the transition's winner gets here, so each terminal transition opens one delivery.
    notify = session.scalar(select(Job.notify).where(Job.id == job_id))
    if notify:
        session.add(
            WebhookDelivery(job_id=job_id, event=event_name(status), status="pending", attempts=0, created_at=now)
        )
        session.flush()
        _forget(session, job_id)


def unsent_deliveries(session: Session, job_id: str) -> list[int]:
    """Ids of the job's pending deliveries that no attempt has claimed yet."""
    stmt = select(WebhookDelivery.id).where(
        WebhookDelivery.job_id == job_id, WebhookDelivery.status == "pending", WebhookDelivery.attempts == 0
    )
    return list(session.scalars(stmt.order_by(WebhookDelivery.id)))


def claim_delivery_attempt(session: Session, delivery_id: int, *, attempts_before: int) -> WebhookDelivery | None:
    """Take attempt ``attempts_before + 1`` of a pending delivery; ``None`` if it is not this caller's
    to make (delivered, failed, or that attempt already claimed by a duplicate task)."""
    stmt = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.attempts == attempts_before,
        )
        .values(attempts=WebhookDelivery.attempts + 1, last_attempt_at=utcnow())
    )
    if _rowcount(session.execute(stmt, execution_options={"synchronize_session": False})) != 1:
        return None
    _touch_delivery_job(session, delivery_id)
    return session.get(WebhookDelivery, delivery_id, populate_existing=True)


def record_delivery_attempt(
    session: Session, delivery_id: int, *, status: str, status_code: int | None, error: str | None
) -> None:
    """The outcome of the attempt just made: ``pending`` (a retry follows), ``delivered`` or ``failed``."""
    values: dict[str, Any] = {"status": status, "last_status_code": status_code, "last_error": error}
    if status != "pending":
        values["finished_at"] = utcnow()
    session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values),
        execution_options={"synchronize_session": False},
    )
    _touch_delivery_job(session, delivery_id)


def _touch_delivery_job(session: Session, delivery_id: int) -> None:
    # The job's representation lists its deliveries: a delivery's change is a new version of the job.
    owner_job = select(WebhookDelivery.job_id).where(WebhookDelivery.id == delivery_id).scalar_subquery()
    session.execute(
        update(Job).where(Job.id == owner_job).values(updated_at=utcnow()),
        execution_options={"synchronize_session": False},
    )


# --- trials --------------------------------------------------------------------------------------


def record_trial(session: Session, job_id: str, trial: TrialInfo) -> None:
    """Insert or overwrite trial ``trial.number`` of a job, then recount the job's progress.

    Every member of ``TrialInfo`` is a column of ``trial_result``, so a new trial field is declared
    there (and in a migration) only. Idempotent: a retried or redelivered trial overwrites its row,
    verified figures included (the worker attaches them again with ``record_verification``). Also
    touches the heartbeat, since recording a trial proves the worker is alive. ``ValueError`` for a
    state the table does not keep (``waiting``). Whether the commit waits for the disk is the
    engine's: the worker's does not (``workers.runtime.worker_engine``; the study is the trial's
    record, and the worker writes every trial again from it at the end of the job).
    """
    state = TrialState(trial.state)
    now = utcnow()
    row: dict[str, Any] = _stored(trial) | {
        "job_id": job_id,
        "state": state.value,
        "verified": None,
        "created_at": now,
        "finished_at": None if state is TrialState.RUNNING else now,
    }
    session.execute(_trial_upsert(session.get_bind().dialect.name, tuple(row)), row)
    _recount(session, job_id, now=now)
    _forget_trial(session, job_id, trial.number)


def record_verification(session: Session, job_id: str, number: int, verification: Verification) -> None:
    """Attach verified metrics (KL, perplexity, ...) to a trial. ``NotFound`` if it is not recorded."""
    stmt = (
        update(TrialResult)
        .where(TrialResult.job_id == job_id, TrialResult.number == number)
        .values(verified=scrub(verification.to_dict()))
    )
    if _rowcount(session.execute(stmt, execution_options={"synchronize_session": False})) == 0:
        raise NotFound(f"trial {number} of job {job_id!r} is not recorded")
    _update_job(session, job_id, updated_at=utcnow())  # a new version of the job's trials (JobStamp)
    _forget_trial(session, job_id, number)


def set_report(session: Session, job_id: str, report: JobReport) -> None:
    """Store the job's report (verification, export figures); the worker writes it once, at the end."""
    _update_job(session, job_id, report=_stored(report), updated_at=utcnow())


# The two statements of every trial a worker records are built once, and executed with the row's
# values: building one costs more than running it (benchmarks/orchestration.py).


@functools.cache
def _trial_upsert(dialect: str, columns: tuple[str, ...]) -> Any:
    # ON CONFLICT is spelled the same in SQLite and PostgreSQL, but SQLAlchemy builds it per dialect.
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"record_trial supports PostgreSQL and SQLite, not {dialect}")
    stmt = insert(TrialResult.__table__)  # the table's columns take the row's values when it runs
    key = {"job_id", "number", "created_at"}  # a redelivered trial keeps its row's identity and first write
    return stmt.on_conflict_do_update(
        index_elements=[TrialResult.job_id, TrialResult.number],
        set_={name: stmt.excluded[name] for name in columns if name not in key},
    )


def _recount(session: Session, job_id: str, *, now: Any) -> None:
    stmt, values = _recount_statement(), {"counted_job": job_id, "counted_at": now}
    if _rowcount(session.execute(stmt, values, execution_options={"synchronize_session": False})) == 0:
        raise NotFound(f"job {job_id!r} does not exist")
    _forget(session, job_id)


@functools.cache
def _recount_statement() -> Any:
    # Counting from the table (not incrementing) keeps the counters right under redelivery.
    job_id = bindparam("counted_job", type_=Job.id.type)

    def count(states: frozenset[TrialState]) -> Any:
        return (
            select(func.count())
            .select_from(TrialResult)
            .where(TrialResult.job_id == job_id, TrialResult.state.in_([s.value for s in states]))
            .scalar_subquery()
        )

    now = bindparam("counted_at", type_=Job.updated_at.type)
    return (
        update(Job)
        .where(Job.id == job_id)
        .values(
            trials_completed=count(COMPLETED_TRIAL_STATES),
            trials_failed=count(frozenset({TrialState.FAILED})),
            heartbeat_at=now,
            updated_at=now,
        )
    )


# --- helpers --------------------------------------------------------------------------------------


def _stored(value: BaseModel) -> dict[str, Any]:
    # The JSON the REST contract defines (search.results), with NaN and infinity made null.
    stored: dict[str, Any] = scrub(value.model_dump(mode="json"))
    return stored


def _owned_by(owner: str | None) -> Any:
    return Job.owner.is_(None) if owner is None else Job.owner == owner


def _rowcount(result: Result[Any]) -> int:
    return cast("CursorResult[Any]", result).rowcount


def _update_job(session: Session, job_id: str, **values: Any) -> None:
    stmt = update(Job).where(Job.id == job_id).values(**values)
    if _rowcount(session.execute(stmt, execution_options={"synchronize_session": False})) == 0:
        raise NotFound(f"job {job_id!r} does not exist")
    _forget(session, job_id)


def _guarded_update(session: Session, job_id: str, *, from_statuses: tuple[JobStatus, ...], **values: Any) -> bool:
    stmt = update(Job).where(Job.id == job_id, Job.status.in_([s.value for s in from_statuses])).values(**values)
    changed = _rowcount(session.execute(stmt, execution_options={"synchronize_session": False})) == 1
    _forget(session, job_id)
    return changed


def _reload(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist")
    return job


def _forget(session: Session, job_id: str) -> None:
    # Updates bypass the identity map; expire a cached Job so the next access reads the row.
    cached = session.identity_map.get(session.identity_key(Job, job_id))
    if cached is not None:
        session.expire(cached)


def _forget_trial(session: Session, job_id: str, number: int) -> None:
    for obj in list(session.identity_map.values()):
        # Read the loaded state directly: touching an expired attribute would emit a query.
        state = inspect(obj).dict
        if isinstance(obj, TrialResult) and state.get("job_id") == job_id and state.get("number") == number:
            session.expire(obj)
