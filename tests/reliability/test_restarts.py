"""The API, the broker and the database go away while jobs run: real processes, nothing lost."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from service import apikeys
from service.db import make_engine, make_sessionmaker
from tests.e2e import flow
from tests.e2e.processes import wait_until
from tests.reliability.cluster import Cluster, PrivateRedis, check_exactly_n_trials, cluster_on

pytestmark = pytest.mark.e2e


def body(model: Path, n_trials: int, **overrides: Any) -> dict[str, Any]:
    return flow.job_body(model, n_trials=n_trials, verify_top_k=1, **overrides)


def wait_running(cluster: Cluster, job_id: str, trials: int = 2) -> None:
    def progressing() -> bool:
        row = cluster.job_row(job_id)
        return row["status"] == "running" and row["trials_completed"] >= trials

    wait_until(progressing, timeout=120, interval=0.2, what=f"job {job_id} to finish {trials} trials")


def check_succeeded(cluster: Cluster, job_id: str, n_trials: int) -> dict[str, Any]:
    job = cluster.wait_for(job_id, timeout=240)
    assert job["status"] == "succeeded", job
    check_exactly_n_trials(cluster, job_id, n_trials)
    return job


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A Redis of this module's own, so a test may restart it (the shared one is never touched)."""
    redis_server = PrivateRedis(tmp_path_factory.mktemp("broker"))
    redis_server.start()
    yield redis_server
    redis_server.kill()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_database_factory: Callable[[], str],
    broker: PrivateRedis,
    tiny_llama_dir: Path,
) -> Iterator[Cluster]:
    # Production shape: API keys, and local models only from an allowed folder.
    work = tmp_path_factory.mktemp("restarts")
    with cluster_on(postgres_database_factory(), broker.url, work, model_roots=str(tiny_llama_dir)) as deployment:
        engine = make_engine(deployment.database_url)
        with make_sessionmaker(engine)() as session:
            key = apikeys.create_key(session, "alice").key
            session.commit()
        engine.dispose()
        deployment.client.headers["Authorization"] = f"Bearer {key}"
        deployment.start_api()
        deployment.start_worker()
        yield deployment


def test_api_restarted_while_jobs_run(cluster: Cluster, tiny_llama_dir: Path) -> None:
    running = flow.submit(cluster.client, body(tiny_llama_dir, 8))
    queued = flow.submit(cluster.client, body(tiny_llama_dir, 3))
    wait_running(cluster, running)
    assert cluster.api is not None
    cluster.api.kill_group()  # no graceful shutdown
    with pytest.raises(httpx.TransportError):
        cluster.client.get(f"/v1/jobs/{running}")
    time.sleep(1)
    cluster.start_api()  # same port, same settings: polling resumes where it was
    check_succeeded(cluster, running, 8)
    check_succeeded(cluster, queued, 3)
    listed = {job["id"] for job in cluster.client.get("/v1/jobs").json()["items"]}
    assert {running, queued} <= listed


def test_redis_restarted_while_one_job_runs_and_one_is_queued(
    cluster: Cluster, broker: PrivateRedis, tiny_llama_dir: Path
) -> None:
    running = flow.submit(cluster.client, body(tiny_llama_dir, 8))
    wait_running(cluster, running)
    queued = flow.submit(cluster.client, body(tiny_llama_dir, 3))
    assert cluster.job_row(queued)["status"] == "queued"
    jobs_before = cluster.client.get("/v1/jobs").json()["items"]

    broker.kill()  # no persistence: the queued job's message is gone for good
    refused = cluster.client.post("/v1/jobs", json=body(tiny_llama_dir, 3))
    assert refused.status_code == 503, refused.text  # refused cleanly: nothing is created
    assert refused.headers["content-type"].startswith("application/problem+json")
    time.sleep(1)
    broker.start()

    check_succeeded(cluster, running, 8)
    job = check_succeeded(cluster, queued, 3)
    assert job["attempts"] == 1  # run once, from the message the reaper re-sent
    assert len(cluster.client.get("/v1/jobs").json()["items"]) == len(jobs_before)


def test_database_connections_dropped_while_a_job_runs(cluster: Cluster, tiny_llama_dir: Path) -> None:
    # Slower trials, so a drop lands mid-trial as well as between trials.
    job_id = flow.submit(
        cluster.client, body(tiny_llama_dir, 8, calibration={"n_samples": 16, "seq_len": 128, "heldout_samples": 4})
    )
    wait_running(cluster, job_id, trials=2)
    admin = create_engine(cluster.database_url, isolation_level="AUTOCOMMIT")
    terminate = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    try:
        for _ in range(3):  # what a PostgreSQL restart does to every client, three times
            with admin.connect() as connection:
                assert connection.execute(terminate).scalar_one() >= 1
            time.sleep(1.5)
    finally:
        admin.dispose()
    job = check_succeeded(cluster, job_id, 8)
    assert job["error"] is None
    assert cluster.api is not None and cluster.api.alive
    assert all(process.alive for process in cluster.processes if process.name.startswith("worker"))
