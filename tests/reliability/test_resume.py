"""``POST /v1/jobs/{id}/resume`` against real processes: a job cancelled mid-search resumes on a Celery
worker, keeps every trial, and ends with exactly ``n_trials`` complete ones, none run twice (PostgreSQL,
Redis, API and worker as deployed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import flow
from tests.e2e.processes import wait_until
from tests.reliability.cluster import Cluster, check_exactly_n_trials, cluster_on
from tests.reliability.test_worker_faults import slow_body

pytestmark = pytest.mark.e2e

N_TRIALS = 10


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_database_factory: Callable[[], str], redis_url: str
) -> Iterator[Cluster]:
    with cluster_on(postgres_database_factory(), redis_url, tmp_path_factory.mktemp("resume")) as deployment:
        deployment.start_api()
        deployment.start_worker()
        yield deployment


def cancelled_mid_search(cluster: Cluster, model: Path) -> tuple[str, list[dict[str, Any]]]:
    """A job cancelled after a few of its ``N_TRIALS`` trials; returns it and its trials then."""
    job_id = flow.submit(cluster.client, slow_body(model, n_trials=N_TRIALS))

    def a_few_done() -> bool:
        row = cluster.job_row(job_id)
        return row["status"] == "running" and row["trials_completed"] >= 3

    wait_until(a_few_done, timeout=120, interval=0.1, what="a few trials")
    assert cluster.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = cluster.wait_for(job_id, timeout=60)
    assert job["status"] == "cancelled", job
    assert 3 <= job["progress"]["trials_completed"] < N_TRIALS, job
    return job_id, flow.all_trials(cluster.client, job_id)


def check_resumed(cluster: Cluster, job_id: str, before: list[dict[str, Any]], n_trials: int) -> None:
    """Succeeded with exactly ``n_trials`` complete trials; the earlier ones kept as they were, and no
    candidate evaluated twice (the resume did not start the study over)."""
    job = cluster.wait_for(job_id, timeout=240)
    assert job["status"] == "succeeded" and job["error"] is None and not job["cancel_requested"], job
    check_exactly_n_trials(cluster, job_id, n_trials)
    after = {t["number"]: t for t in flow.all_trials(cluster.client, job_id)}
    for trial in before:
        if trial["state"] == "complete":
            kept = after[trial["number"]]
            assert (kept["state"], kept["arch"], kept["value"]) == (trial["state"], trial["arch"], trial["value"])
    archs = [repr(t["arch"]) for t in after.values() if t["state"] == "complete"]
    assert len(archs) == len(set(archs)) == n_trials
    assert job["best"]["verified"] is not None  # verification ran again over all the trials
    assert cluster.client.get(f"/v1/jobs/{job_id}/report").status_code == 200


def test_a_cancelled_job_resumes_to_exactly_its_n_trials(cluster: Cluster, tiny_llama_dir: Path) -> None:
    job_id, before = cancelled_mid_search(cluster, tiny_llama_dir)
    response = cluster.client.post(f"/v1/jobs/{job_id}/resume")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    check_resumed(cluster, job_id, before, N_TRIALS)
    refused = cluster.client.post(f"/v1/jobs/{job_id}/resume")
    assert refused.status_code == 409 and refused.json()["job_status"] == "succeeded", refused.text


def test_a_resume_with_more_trials_runs_the_extra_ones_and_never_fewer(cluster: Cluster, tiny_llama_dir: Path) -> None:
    job_id, before = cancelled_mid_search(cluster, tiny_llama_dir)
    complete = sum(t["state"] == "complete" for t in before)
    below = cluster.client.post(f"/v1/jobs/{job_id}/resume", json={"n_trials": complete - 1})
    assert below.status_code == 422 and below.json()["errors"][0]["loc"] == ["body", "n_trials"], below.text
    assert cluster.client.post(f"/v1/jobs/{job_id}/resume", json={"n_trials": N_TRIALS + 3}).status_code == 202

    def running() -> bool:
        return cluster.job_row(job_id)["status"] in ("running", "succeeded")

    wait_until(running, timeout=60, interval=0.05, what="the resumed job to run")
    again = cluster.client.post(f"/v1/jobs/{job_id}/resume")
    assert again.status_code == 409 and again.headers["content-type"].startswith("application/problem+json")
    check_resumed(cluster, job_id, before, N_TRIALS + 3)
