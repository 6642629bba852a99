"""``POST /v1/jobs/{id}/resume`` on PostgreSQL + Redis, without a worker: which states resume, the
``n_trials`` rule, what the row looks like queued again, and the task sent after the commit. A real
resumed search: tests/reliability/test_resume.py."""

from __future__ import annotations

from pathlib import Path

import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service import repository
from service.states import JobStatus
from tests.service.helpers import assert_problem, job_spec, trial_info
from tests.service.test_api_submit import _queued_job_ids


def _job(session: Session, model: Path, *, n_trials: int = 6) -> str:
    job = repository.create_job(
        session, spec=job_spec(model, n_trials=n_trials), model=str(model), trials_total=n_trials
    )
    session.commit()
    return job.id


def _cancelled_with_trials(session: Session, model: Path, complete: int) -> str:
    """A job cancelled mid-search: ``complete`` complete trials, one failed, an error-free cancel."""
    job_id = _job(session, model)
    assert repository.claim_job(session, job_id, worker="w1", stale_after_s=300)
    for number in range(complete):
        repository.record_trial(session, job_id, trial_info(number, value=-float(number)))
    repository.record_trial(session, job_id, trial_info(complete, "failed", error="nan"))
    repository.request_cancel(session, job_id)
    assert repository.finish_job(session, job_id, JobStatus.CANCELLED)
    session.commit()
    return job_id


def test_a_cancelled_job_is_queued_again_with_its_trials_and_a_larger_n_trials(
    pg_client: TestClient, pg_session: Session, redis_client: redis.Redis, tiny_model_config_dir: Path
) -> None:
    job_id = _cancelled_with_trials(pg_session, tiny_model_config_dir, complete=3)

    problem = assert_problem(pg_client.post(f"/v1/jobs/{job_id}/resume", json={"n_trials": 2}), 422, "below the 3")
    assert problem["errors"][0]["loc"] == ["body", "n_trials"]
    assert pg_client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"  # refused: nothing moved
    assert _queued_job_ids(redis_client) == []

    response = pg_client.post(f"/v1/jobs/{job_id}/resume", json={"n_trials": 9})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["spec"]["n_trials"] == 9 and job["progress"]["trials_total"] == 9
    assert job["cancel_requested"] is False and job["finished_at"] is None and job["error"] is None
    assert job["progress"]["trials_completed"] == 3  # every trial is kept
    assert _queued_job_ids(redis_client) == [job_id]

    problem = assert_problem(pg_client.post(f"/v1/jobs/{job_id}/resume"), 409, "queued")
    assert problem["job_status"] == "queued"


def test_a_failed_job_resumes_with_its_own_n_trials_and_its_error_cleared(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    job_id = _job(pg_session, tiny_model_config_dir)
    assert repository.finish_job(pg_session, job_id, JobStatus.FAILED, error="RuntimeError: out of memory")
    pg_session.commit()
    job = pg_client.post(f"/v1/jobs/{job_id}/resume").json()
    assert job["status"] == "queued" and job["error"] is None and job["spec"]["n_trials"] == 6


def test_running_and_succeeded_jobs_do_not_resume(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    job_id = _job(pg_session, tiny_model_config_dir)
    assert repository.claim_job(pg_session, job_id, worker="w1", stale_after_s=300)
    problem = assert_problem(pg_client.post(f"/v1/jobs/{job_id}/resume"), 409, "running; cancel it first")
    assert problem["job_status"] == "running"
    assert repository.finish_job(pg_session, job_id, JobStatus.SUCCEEDED)
    pg_session.commit()
    assert_problem(pg_client.post(f"/v1/jobs/{job_id}/resume", json={"n_trials": 50}), 409, "succeeded")
    assert_problem(pg_client.post("/v1/jobs/nope/resume"), 404, "does not exist")
    assert_problem(pg_client.post(f"/v1/jobs/{job_id}/resume", json={"n_trials": 0}), 422)
