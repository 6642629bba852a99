"""Repository contract, run on PostgreSQL and on SQLite: guarded transitions and idempotent trials."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from search.results import Verification
from service import migrate, repository
from service.db import make_engine, make_sessionmaker
from service.errors import JobNotCancellable, MalformedRequest, NotFound
from service.models import Job, TrialResult, utcnow
from service.states import JobStatus
from tests.service.helpers import best_entry, trial_info


@pytest.fixture(params=["postgresql", "sqlite"])
def session(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Session]:
    engine: Engine
    if request.param == "postgresql":
        engine = request.getfixturevalue("clean_postgres")
    else:
        migrate.upgrade(sqlite_url)
        engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        yield session
    if request.param == "sqlite":
        engine.dispose()


def _job(session: Session, trials: int = 10) -> str:
    job = repository.create_job(session, spec={"model": "m"}, model="m", trials_total=trials)
    session.commit()
    return job.id


def test_claim_is_guarded(session: Session) -> None:
    job_id = _job(session)

    assert repository.claim_job(session, job_id, worker="a", stale_after_s=300) is True
    assert repository.claim_job(session, job_id, worker="b", stale_after_s=300) is False

    job = repository.require_job(session, job_id)
    assert (job.status, job.worker, job.attempts) == ("running", "a", 1)
    assert job.started_at is not None and job.heartbeat_at is not None


def test_stale_heartbeat_can_be_reclaimed(session: Session) -> None:
    job_id = _job(session)
    assert repository.claim_job(session, job_id, worker="a", stale_after_s=300)
    started_at = repository.require_job(session, job_id).started_at
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=301)))
    session.commit()

    assert repository.claim_job(session, job_id, worker="b", stale_after_s=300) is True
    job = repository.require_job(session, job_id)
    assert (job.worker, job.attempts, job.started_at) == ("b", 2, started_at)  # first start kept
    assert repository.claim_job(session, job_id, worker="c", stale_after_s=300) is False


def test_terminal_and_cancelled_jobs_cannot_be_claimed(session: Session) -> None:
    job_id = _job(session)
    repository.request_cancel(session, job_id)
    session.commit()
    assert repository.claim_job(session, job_id, worker="a", stale_after_s=0) is False
    assert repository.claim_job(session, "missing", worker="a", stale_after_s=0) is False


def test_record_trial_is_idempotent_and_recounts(session: Session) -> None:
    job_id = _job(session)
    repository.record_trial(session, job_id, trial_info(0, "running"))
    repository.record_trial(session, job_id, trial_info(0, "complete", value=0.9))
    repository.record_trial(session, job_id, trial_info(0, "complete", value=0.9))
    repository.record_trial(session, job_id, trial_info(1, "failed", origin="seed:uniform", error="x"))
    repository.record_trial(session, job_id, trial_info(2, "pruned"))
    session.commit()

    rows = session.scalar(select(func.count()).select_from(TrialResult).where(TrialResult.job_id == job_id))
    assert rows == 3
    job = repository.require_job(session, job_id)
    assert (job.trials_completed, job.trials_failed) == (2, 1)  # pruned counts as completed
    assert job.heartbeat_at is not None

    # A redelivered trial that now fails moves the counters the other way.
    repository.record_trial(session, job_id, trial_info(0, "failed", error="oom"))
    session.commit()
    job = repository.require_job(session, job_id)
    assert (job.trials_completed, job.trials_failed) == (1, 2)
    trials, _ = repository.list_trials(session, job_id, limit=10, cursor=None)
    assert [(t.number, t.state, t.value) for t in trials] == [
        (0, "failed", None),
        (1, "failed", None),
        (2, "pruned", None),
    ]
    assert all(t.finished_at is not None for t in trials)


def test_record_trial_rejects_unknown_state(session: Session) -> None:
    job_id = _job(session)
    with pytest.raises(ValueError, match="'done'"):  # the search's trial type refuses it
        repository.record_trial(session, job_id, trial_info(0, "done"))
    with pytest.raises(ValueError, match="'waiting'"):  # a state the search has but the table does not keep
        repository.record_trial(session, job_id, trial_info(0, "waiting"))


def test_record_verification(session: Session) -> None:
    job_id = _job(session)
    repository.record_trial(session, job_id, trial_info(4, "complete", value=1.0))
    figures = Verification(primary="kl", metrics={"kl": 0.12, "ppl": float("nan")}, tokens=4096)
    repository.record_verification(session, job_id, 4, figures)
    session.commit()
    trial = repository.list_trials(session, job_id, limit=1, cursor=None)[0][0]
    assert trial.verified == {"kl": 0.12, "ppl": None, "tokens": 4096, "primary": "kl"}
    with pytest.raises(NotFound):
        repository.record_verification(session, job_id, 5, Verification(primary="kl", metrics={"kl": 0.1}))


def test_finish_job_is_guarded(session: Session) -> None:
    queued = _job(session)
    assert repository.finish_job(session, queued, JobStatus.SUCCEEDED) is False  # never ran
    assert repository.finish_job(session, queued, JobStatus.FAILED, error="model vanished") is True
    session.commit()
    assert repository.require_job(session, queued).error == "model vanished"

    running = _job(session)
    assert repository.claim_job(session, running, worker="a", stale_after_s=300)
    best = best_entry(3, score=0.8)
    assert repository.finish_job(session, running, JobStatus.SUCCEEDED, best=best) is True
    assert repository.finish_job(session, running, JobStatus.FAILED, error="late") is False
    session.commit()
    job = repository.require_job(session, running)
    assert (job.status, job.best, job.error) == ("succeeded", best.model_dump(), None)
    assert job.finished_at is not None
    with pytest.raises(ValueError, match="terminal"):
        repository.finish_job(session, running, JobStatus.RUNNING)


def test_cancel_transitions(session: Session) -> None:
    queued = _job(session)
    assert repository.is_cancel_requested(session, queued) is False
    assert repository.request_cancel(session, queued).status == "cancelled"
    with pytest.raises(JobNotCancellable):
        repository.request_cancel(session, queued)

    running = _job(session)
    repository.claim_job(session, running, worker="a", stale_after_s=300)
    job = repository.request_cancel(session, running)
    assert (job.status, job.cancel_requested) == ("running", True)
    assert repository.is_cancel_requested(session, running) is True
    assert repository.finish_job(session, running, JobStatus.CANCELLED) is True
    with pytest.raises(NotFound):
        repository.request_cancel(session, "missing")
    assert repository.is_cancel_requested(session, "missing") is True


def test_heartbeat_and_best(session: Session) -> None:
    job_id = _job(session)
    repository.heartbeat(session, job_id)
    repository.set_best(session, job_id, best_entry(1, score=float("inf")))
    session.commit()
    job = repository.require_job(session, job_id)
    assert job.heartbeat_at is not None and job.best == best_entry(1).model_dump() | {"score": None}
    with pytest.raises(NotFound):
        repository.heartbeat(session, "missing")


def test_idempotency_key_lookup_and_list_cursor(session: Session) -> None:
    keyed = repository.create_job(session, spec={}, model="m", trials_total=1, idempotency_key="k1")
    session.commit()
    assert repository.find_job_by_idempotency_key(session, "k1") is keyed
    assert repository.find_job_by_idempotency_key(session, "k2") is None

    ids = [_job(session) for _ in range(3)]
    page, cursor = repository.list_jobs(session, limit=2, cursor=None, status="queued")
    assert [job.id for job in page] == ids[:0:-1] and cursor is not None
    rest, end = repository.list_jobs(session, limit=2, cursor=cursor, status="queued")
    assert [job.id for job in rest] == [ids[0], keyed.id] and end is None
    with pytest.raises(MalformedRequest):
        repository.list_jobs(session, limit=2, cursor="eyJ4IjoxfQ", status=None)  # valid base64, wrong shape
