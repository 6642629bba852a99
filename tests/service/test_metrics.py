"""``GET /metrics``: the database's counts at scrape time, the HTTP histogram, bounded labels, the guard."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from service import apikeys, repository
from service.api.app import create_app
from service.db import make_sessionmaker
from service.metrics import proxy_label
from service.models import ApiKey
from service.settings import Settings
from tests.service.helpers import assert_problem, job_spec, trial_info

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient, **kwargs: object) -> tuple[str, Samples]:
    response = client.get("/metrics", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def api_key(clean_postgres: Engine) -> Iterator[str]:
    with make_sessionmaker(clean_postgres)() as session:
        issued = apikeys.create_key(session, "prometheus-test")
        session.commit()
    yield issued.key
    with clean_postgres.begin() as connection:
        connection.execute(delete(ApiKey))


def test_job_and_trial_counts_move(
    pg_client: TestClient, pg_session: Session, redis_client: redis.Redis, tiny_model_config_dir: Path
) -> None:
    _, before = scrape(pg_client)
    assert value(before, "prunesearch_database_up") == 1
    assert value(before, "prunesearch_jobs", status="queued") == 0
    submitted = pg_client.post("/v1/jobs", json=job_spec(tiny_model_config_dir))
    assert submitted.status_code == 202, submitted.text
    _, queued = scrape(pg_client)
    assert value(queued, "prunesearch_jobs", status="queued") == 1
    assert value(queued, "prunesearch_queue_depth", queue="celery") == 1  # nothing consumes it here

    # A worker claims a job and writes trials through the repository, as workers.jobs does.
    single = repository.create_job(pg_session, spec={"proxy": "tracenas"}, model="m", trials_total=3)
    listed = repository.create_job(pg_session, spec={"proxy": ["tracenas", "prunenet"]}, model="m", trials_total=1)
    pg_session.commit()
    assert repository.claim_job(pg_session, single.id, worker="celery@gpu0", stale_after_s=300)
    repository.record_trial(pg_session, single.id, trial_info(0, "complete", value=1.0, duration_s=0.3))
    repository.record_trial(pg_session, single.id, trial_info(1, "complete", value=0.5, duration_s=7.0))
    repository.record_trial(pg_session, single.id, trial_info(2, "failed", error="oom", duration_s=0.05))
    repository.record_trial(pg_session, listed.id, trial_info(0, "complete", value=0.1, duration_s=2.0))
    pg_session.commit()

    text, after = scrape(pg_client)
    assert value(after, "prunesearch_jobs", status="queued") == 2
    assert value(after, "prunesearch_jobs", status="running") == 1
    assert value(after, "prunesearch_trials", state="complete") == 3
    assert value(after, "prunesearch_trials", state="failed") == 1
    histogram = "prunesearch_trial_duration_seconds"
    assert value(after, f"{histogram}_count", proxy="tracenas") == 3
    assert value(after, f"{histogram}_bucket", proxy="tracenas", le="0.5") == 2
    assert value(after, f"{histogram}_bucket", proxy="tracenas", le="+Inf") == 3
    assert value(after, f"{histogram}_sum", proxy="tracenas") == pytest.approx(7.35)
    assert value(after, f"{histogram}_count", proxy="ensemble") == 1
    assert value(after, "prunesearch_worker_last_heartbeat_timestamp_seconds", worker="celery@gpu0") > 1.7e9
    for job_id in (submitted.json()["id"], single.id, listed.id):
        assert job_id not in text  # never a label value


def test_request_latency_is_labelled_by_route_template(pg_client: TestClient, pg_session: Session) -> None:
    job = repository.create_job(pg_session, spec={}, model="m", trials_total=1)
    pg_session.commit()
    for _ in range(3):
        assert pg_client.get(f"/v1/jobs/{job.id}").status_code == 200
    assert pg_client.get("/v1/jobs/" + "0" * 32).status_code == 404
    assert pg_client.get(f"/no/such/{job.id}").status_code == 404
    assert pg_client.request("BREW", "/healthz").status_code == 405
    text, samples = scrape(pg_client)
    name = "prunesearch_http_request_duration_seconds_count"
    assert value(samples, name, method="GET", route="/v1/jobs/{job_id}", status="200") == 3
    assert value(samples, name, method="GET", route="/v1/jobs/{job_id}", status="404") == 1
    assert value(samples, name, method="GET", route="unmatched", status="404") == 1
    assert value(samples, name, method="other", route="/healthz", status="405") == 1
    assert job.id not in text
    routes = {dict(labels)["route"] for (sample, labels) in samples if sample == name}
    assert all(route == "unmatched" or route.startswith("/") for route in routes)
    assert all("0" * 32 not in route for route in routes)


def test_metrics_need_a_key_once_keys_exist(
    client_for: Callable[[Settings], TestClient], pg_settings: Settings, api_key: str
) -> None:
    client = client_for(pg_settings.model_copy(update={"metrics_token": SecretStr("scrape-me")}))
    assert_problem(client.get("/metrics"), 401, "requires an API key")
    assert_problem(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401)
    scrape(client, headers={"Authorization": f"Bearer {api_key}"})
    scrape(client, headers={"Authorization": "Bearer scrape-me"})


def test_anonymous_metrics_only_on_loopback(pg_settings: Settings) -> None:
    # The server side of the socket is a LAN address: a server bound to 0.0.0.0.
    with TestClient(create_app(pg_settings), base_url="http://192.0.2.10") as client:
        assert_problem(client.get("/metrics"), 401, "loopback only")
    with_token = pg_settings.model_copy(update={"metrics_token": SecretStr("scrape-me")})
    with TestClient(create_app(with_token), base_url="http://192.0.2.10") as client:
        scrape(client, headers={"Authorization": "Bearer scrape-me"})
    trusted = pg_settings.model_copy(update={"allow_anonymous": True})
    with TestClient(create_app(trusted), base_url="http://192.0.2.10") as client:
        scrape(client)


def test_metrics_token_setting() -> None:
    assert Settings(metrics_token="").metrics_token is None
    token = Settings(metrics_token="s3cr3t-token").metrics_token
    assert token is not None and token.get_secret_value() == "s3cr3t-token"
    assert "s3cr3t" not in repr(Settings(metrics_token="s3cr3t-token"))


@pytest.mark.parametrize(
    ("raw", "label"), [("tracenas", "tracenas"), ('["a", "b"]', "ensemble"), (None, "other"), ("x y{}", "other")]
)
def test_proxy_labels_are_bounded(raw: str | None, label: str) -> None:
    assert proxy_label(raw) == label
