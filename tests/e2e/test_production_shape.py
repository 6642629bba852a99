"""`prunesearch db upgrade`, `prunesearch api` and `prunesearch worker` as separate processes on the
real PostgreSQL and Redis, driven over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from tests.e2e import flow
from tests.e2e.processes import PRUNESEARCH, Process, base_env, free_port, run_command, wait_ready

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, postgres_database_factory, redis_url: str
) -> Iterator[tuple[httpx.Client, str]]:
    database_url = postgres_database_factory()
    port = free_port()
    logs = tmp_path_factory.mktemp("logs")
    env = base_env(tmp_path_factory.mktemp("data"), database_url=database_url, broker_url=redis_url, port=str(port))
    run_command(["db", "upgrade"], env)
    processes = [
        Process("api", [*PRUNESEARCH, "api"], env, logs),
        Process("worker", [*PRUNESEARCH, "worker"], env, logs),
    ]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_ready(client, processes)
        yield client, database_url
    except BaseException:
        for process in processes:
            print(process.tail())
        raise
    finally:
        client.close()
        for process in processes:
            process.stop()
    for process in processes:
        print(process.tail(20))


def test_job_runs_to_completion_and_every_trial_is_stored(
    service: tuple[httpx.Client, str], tiny_llama_dir: Path, tmp_path: Path
) -> None:
    client, database_url = service
    job_id = flow.submit(client, flow.job_body(tiny_llama_dir))
    flow.check_completed_job(client, job_id)
    flow.check_report_and_artifacts(client, job_id, tmp_path)

    # Every trial of the Optuna study is a row of trial_result, with the same state and score.
    study = optuna.load_study(study_name=f"job-{job_id}", storage=database_url)
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT number, state, value FROM trial_result WHERE job_id = :id ORDER BY number"), {"id": job_id}
        ).all()
    engine.dispose()
    assert [(t.number, t.value) for t in study.trials] == [(r.number, r.value) for r in rows]
    assert all(r.state == "complete" for r in rows)
    _check_metrics(client, job_id, len(rows))


def _check_metrics(client: httpx.Client, job_id: str, trials: int) -> None:
    """The worker's rows show in the API's /metrics (read from the database at scrape time)."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples[("prunesearch_jobs", (("status", "succeeded"),))] >= 1
    assert samples[("prunesearch_trials", (("state", "complete"),))] >= trials
    assert samples[("prunesearch_trial_duration_seconds_count", (("proxy", "tracenas"),))] >= trials
    polls = (
        "prunesearch_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200")),
    )
    assert samples[polls] >= 1
    assert job_id not in response.text


def test_cancel_stops_a_running_job_and_keeps_its_trials(
    service: tuple[httpx.Client, str], tiny_llama_dir: Path
) -> None:
    flow.check_cancel(service[0], tiny_llama_dir)


def test_a_job_that_cannot_load_its_model_fails_with_a_readable_error(
    service: tuple[httpx.Client, str], broken_model_dir: Path
) -> None:
    flow.check_failing_job(service[0], broken_model_dir)
