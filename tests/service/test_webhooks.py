"""Webhooks at the service layer: ``notify.url`` checked at submission (422 naming the field), the
delivery opened by the job's end and shown in the job, a real receiver verifying the signature of
the worker's delivery function, per-key secrets and their rotation, the check again at delivery.

The whole path through real worker processes (one event per terminal state, retries, a slow
receiver) is tests/workers/test_webhook_delivery.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session, sessionmaker

from service import apikeys, repository
from service.api.schemas import API_PREFIX
from service.broker import NOTIFY_QUEUE
from service.models import ApiKey
from service.notify import events
from service.notify.signing import sign, verify
from service.notify.urls import NotifyUrlRefused, check_notify_url
from service.settings import Settings
from service.states import JobStatus
from tests.service.helpers import assert_problem, job_spec
from tests.service.receiver import receiver
from workers.notify import deliver

SECRET = "whsec_test-anonymous-secret"


@pytest.fixture
def local_settings(pg_settings: Settings) -> Settings:
    """Receivers on 127.0.0.1 over http: both allowed, as for local testing; no retries."""
    return pg_settings.model_copy(
        update={
            "webhook_allow_http": True,
            "webhook_allow_private": True,
            "webhook_secret": SecretStr(SECRET),
            "webhook_retries": 0,
            "webhook_timeout_s": 2.0,
        }
    )


def _submit(client: TestClient, model: Path, url: str, **headers: str) -> dict[str, object]:
    response = client.post("/v1/jobs", json=job_spec(model, notify={"url": url}), headers=headers)
    assert response.status_code == 202, response.text
    job: dict[str, object] = response.json()
    return job


@pytest.mark.parametrize(
    ("url", "update", "says"),
    [
        ("not a url", {}, "scheme"),
        ("ftp://hooks.example.com/x", {}, "scheme 'ftp'"),
        ("http://hooks.example.com/x", {}, "http only with webhook_allow_http"),
        ("https://user:pw@hooks.example.com/x", {}, "credentials"),
        ("https:///x", {}, "no host"),
        ("https://hooks.example.com:99999/x", {}, "not a URL"),
        ("https://other.example.org/x", {"webhook_allowed_hosts": ("*.example.com",)}, "webhook_allowed_hosts"),
        ("https://127.0.0.1/x", {}, "private, loopback or link-local"),
        ("https://localhost:8443/x", {}, "resolves to 127.0.0.1"),
        ("https://169.254.169.254/latest", {}, "link-local"),
        ("https://[::ffff:10.0.0.1]/x", {}, "private"),
        ("https://no-such-host.invalid/x", {}, "does not resolve"),
    ],
)
def test_bad_notify_urls_are_422_naming_the_field(
    client_for: Callable[[Settings], TestClient],
    pg_settings: Settings,
    tiny_model_config_dir: Path,
    url: str,
    update: dict[str, object],
    says: str,
) -> None:
    client = client_for(pg_settings.model_copy(update={"webhook_secret": SecretStr(SECRET)} | update))
    problem = assert_problem(client.post("/v1/jobs", json=job_spec(tiny_model_config_dir, notify={"url": url})), 422)
    assert says in problem["detail"], problem
    assert problem["errors"][0]["loc"] == ["body", "notify", "url"], problem
    assert client.get("/v1/jobs").json()["items"] == []  # nothing was created


def test_notify_shape_and_anonymous_secret_are_checked(
    client_for: Callable[[Settings], TestClient], pg_settings: Settings, tiny_model_config_dir: Path
) -> None:
    client = client_for(pg_settings.model_copy(update={"webhook_allow_private": True}))
    body = job_spec(tiny_model_config_dir, notify={"url": "https://127.0.0.1/x"})
    # Without PRUNESEARCH_WEBHOOK_SECRET nobody could verify an anonymous job's events: refused now.
    problem = assert_problem(client.post("/v1/jobs", json=body), 422, "PRUNESEARCH_WEBHOOK_SECRET")
    assert problem["errors"][0]["loc"] == ["body", "notify", "url"]
    extra = job_spec(tiny_model_config_dir, notify={"url": "https://127.0.0.1/x", "secret": "x"})
    assert any(
        e["loc"][:2] == ["body", "notify"] for e in assert_problem(client.post("/v1/jobs", json=extra), 422)["errors"]
    )


def test_idempotent_resubmission_compares_notify(
    client_for: Callable[[Settings], TestClient], local_settings: Settings, tiny_model_config_dir: Path
) -> None:
    client = client_for(local_settings)
    body = job_spec(tiny_model_config_dir, notify={"url": "http://127.0.0.1:9/a"})
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (202, 200) and first.json()["id"] == again.json()["id"]
    other = body | {"notify": {"url": "http://127.0.0.1:9/b"}}
    assert_problem(client.post("/v1/jobs", json=other, headers={"Idempotency-Key": "k1"}), 422, "already used")


def test_allow_list_and_public_addresses(pg_settings: Settings) -> None:
    allowed = pg_settings.model_copy(update={"webhook_allowed_hosts": ("*.example.com", "hooks.example.org")})
    public = {"a.example.com": ["93.184.216.34"], "hooks.example.org": ["2606:2800:220:1::1"], "x.com": ["1.1.1.1"]}

    def resolve(host: str, port: int) -> list[str]:
        return public[host]

    check_notify_url("https://a.example.com/hook", allowed, resolve=resolve)
    check_notify_url("https://hooks.example.org/hook", allowed, resolve=resolve)
    with pytest.raises(NotifyUrlRefused, match="webhook_allowed_hosts"):
        check_notify_url("https://example.com.evil.net/hook", allowed, resolve=resolve)
    check_notify_url("https://x.com/hook", pg_settings, resolve=resolve)  # an empty allow-list: any public host
    rebound = {"x.com": ["1.1.1.1", "10.1.2.3"]}  # one private address among public ones is enough to refuse
    with pytest.raises(NotifyUrlRefused, match=r"10\.1\.2\.3"):
        check_notify_url("https://x.com/hook", pg_settings, resolve=lambda host, port: rebound[host])


def test_signature_recipe() -> None:
    body = b'{"event":"job.succeeded"}'
    signature = sign("s3cret", 1_700_000_000, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify("s3cret", body, timestamp="1700000000", signature=signature, now=1_700_000_100)
    assert not verify("other", body, timestamp="1700000000", signature=signature, now=1_700_000_100)
    assert not verify("s3cret", body + b" ", timestamp="1700000000", signature=signature, now=1_700_000_100)
    # The timestamp is signed: a replay with a fresh timestamp fails, an old one is too old.
    assert not verify("s3cret", body, timestamp="1700000090", signature=signature, now=1_700_000_100)
    assert not verify("s3cret", body, timestamp="1700000000", signature=signature, now=1_700_001_000)


def test_jobs_path_matches_the_api() -> None:
    assert f"{API_PREFIX}/jobs" == events.JOBS_PATH


def test_cancelled_queued_job_is_delivered_signed_and_shown(
    client_for: Callable[[Settings], TestClient],
    local_settings: Settings,
    clean_postgres: Engine,
    redis_client: redis.Redis,
    tiny_model_config_dir: Path,
) -> None:
    client = client_for(local_settings)
    with receiver() as hooks:
        job = _submit(client, tiny_model_config_dir, hooks.url("/ok"))
        assert job["notify"] == {"url": hooks.url("/ok"), "deliveries": []}
        assert "notify" not in job["spec"]  # service metadata, not the library's JobSpec
        job_id = str(job["id"])
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        shown = client.get(f"/v1/jobs/{job_id}").json()["notify"]["deliveries"]
        assert [(d["event"], d["status"], d["attempts"]) for d in shown] == [("job.cancelled", "pending", 0)]
        queued = [json.loads(m) for m in redis_client.lrange(NOTIFY_QUEUE, 0, -1)]
        assert [m["headers"]["task"] for m in queued] == ["prunesearch.deliver_webhook"]
        delivery_id = queued[0]["headers"]["argsrepr"]

        sessions = sessionmaker(clean_postgres)
        [row] = client.get(f"/v1/jobs/{job_id}").json()["notify"]["deliveries"]
        with sessions() as session:
            [pending] = repository.unsent_deliveries(session, job_id)
        assert str(pending) in delivery_id
        assert deliver(pending, attempts_before=0, settings=local_settings, sessions=sessions).outcome == "delivered"
        # A duplicate task for the same attempt sends nothing.
        assert deliver(pending, attempts_before=0, settings=local_settings, sessions=sessions).outcome == "skipped"

    [event] = hooks.on("/ok")
    assert event.verified_with(SECRET)
    payload = json.loads(event.body)
    assert payload["event"] == "job.cancelled" and payload["job"]["id"] == job_id
    assert payload["job"]["status"] == "cancelled" and payload["links"]["job"] == f"/v1/jobs/{job_id}"
    assert payload["links"]["report"] == f"/v1/jobs/{job_id}/report" and payload["best"] is None
    assert event.headers["x-prunesearch-event"] == "job.cancelled"
    [shown] = client.get(f"/v1/jobs/{job_id}").json()["notify"]["deliveries"]
    assert (shown["status"], shown["attempts"], shown["last_status_code"]) == ("delivered", 1, 204)
    assert shown["finished_at"] is not None and row["status"] == "pending"


def test_keyed_jobs_are_signed_with_their_key_secret_and_rotation_applies(
    client_for: Callable[[Settings], TestClient],
    local_settings: Settings,
    clean_postgres: Engine,
    pg_session: Session,
    tiny_model_config_dir: Path,
) -> None:
    issued = apikeys.create_key(pg_session, "hooks-owner")
    pg_session.commit()
    assert (
        issued.webhook_secret.startswith("whsec_")
        and apikeys.webhook_secret(pg_session, issued.id) == issued.webhook_secret
    )
    roots = (tiny_model_config_dir.parent.resolve(),)  # keyed owners may name only paths inside the roots
    client = client_for(local_settings.model_copy(update={"webhook_secret": None, "model_roots": roots}))
    sessions = sessionmaker(clean_postgres)
    try:
        with receiver() as hooks:
            auth = {"Authorization": f"Bearer {issued.key}"}
            ids = [str(_submit(client, tiny_model_config_dir, hooks.url("/ok"), **auth)["id"]) for _ in range(2)]
            for job_id in ids:
                with sessions() as session:
                    repository.finish_job(session, job_id, JobStatus.FAILED, error="model did not load")
                    session.commit()
            with sessions() as session:
                first, second = (repository.unsent_deliveries(session, job_id)[0] for job_id in ids)
            deliver(first, attempts_before=0, settings=local_settings, sessions=sessions)
            rotated = apikeys.rotate_webhook_secret(pg_session, issued.id)
            pg_session.commit()
            deliver(second, attempts_before=0, settings=local_settings, sessions=sessions)
        before, after = hooks.on("/ok")
        assert before.verified_with(issued.webhook_secret) and not before.verified_with(SECRET)
        assert after.verified_with(rotated) and not after.verified_with(issued.webhook_secret)
        assert json.loads(after.body)["job"]["error"] == "model did not load"
    finally:
        with clean_postgres.begin() as connection:
            connection.execute(delete(ApiKey))


def test_delivery_checks_the_address_again(
    client_for: Callable[[Settings], TestClient],
    local_settings: Settings,
    clean_postgres: Engine,
    tiny_model_config_dir: Path,
) -> None:
    """Accepted while private addresses were allowed; the worker, which does not allow them, refuses
    to call it, and marks the delivery failed at once (a refusal is not retried)."""
    client = client_for(local_settings)
    strict = local_settings.model_copy(update={"webhook_allow_private": False, "webhook_retries": 3})
    sessions = sessionmaker(clean_postgres)
    with receiver() as hooks:
        job_id = str(_submit(client, tiny_model_config_dir, hooks.url("/ok").replace("127.0.0.1", "localhost"))["id"])
        client.post(f"/v1/jobs/{job_id}/cancel")
        with sessions() as session:
            [delivery_id] = repository.unsent_deliveries(session, job_id)
        attempt = deliver(delivery_id, attempts_before=0, settings=strict, sessions=sessions)
        assert attempt.outcome == "failed" and attempt.retry_in is None
        assert hooks.received == []
    [shown] = client.get(f"/v1/jobs/{job_id}").json()["notify"]["deliveries"]
    assert shown["status"] == "failed" and "resolves to 127.0.0.1" in shown["last_error"]
