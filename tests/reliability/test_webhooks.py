"""Webhooks through real processes (API, a Celery worker, PostgreSQL, Redis) and a real receiver:
one signed event per terminal state, a failing receiver retried with Celery's countdown and then
marked failed, a slow one that never holds a job back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import flow
from tests.e2e.processes import wait_until
from tests.reliability.cluster import Cluster, cluster_on
from tests.service.receiver import receiver

pytestmark = pytest.mark.e2e

SECRET = "whsec_e2e-secret"
RETRIES = 2
# Receivers on 127.0.0.1 over http (local testing); tiny retry delays; a timeout below /slow's 2 s.
WEBHOOK_SETTINGS = {
    "webhook_allow_http": "true",
    "webhook_allow_private": "true",
    "webhook_secret": SECRET,
    "webhook_retries": str(RETRIES),
    "webhook_backoff_s": "0.05",
    "webhook_timeout_s": "1",
}


def _deliveries(cluster: Cluster, job_id: str) -> list[dict[str, Any]]:
    deliveries: list[dict[str, Any]] = cluster.client.get(f"/v1/jobs/{job_id}").json()["notify"]["deliveries"]
    return deliveries


def _settled(cluster: Cluster, job_id: str) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        deliveries = _deliveries(cluster, job_id)
        return deliveries if deliveries and all(d["status"] != "pending" for d in deliveries) else None

    settled: list[dict[str, Any]] = wait_until(done, timeout=60, interval=0.3, what=f"the deliveries of {job_id}")
    return settled


def test_one_signed_event_per_terminal_state_retries_and_a_slow_receiver(
    tmp_path: Path,
    postgres_database_factory: Callable[[], str],
    redis_url: str,
    tiny_llama_dir: Path,
    unloadable_model_dir: Path,
) -> None:
    with (
        receiver(slow_s=2.0) as hooks,
        cluster_on(postgres_database_factory(), redis_url, tmp_path, **WEBHOOK_SETTINGS) as cluster,
    ):
        cluster.start_api()
        tiny = flow.job_body(tiny_llama_dir, n_trials=4, verify_top_k=2)
        broken = flow.job_body(unloadable_model_dir)

        def submit(body: dict[str, Any], path: str) -> str:
            return flow.submit(cluster.client, body | {"notify": {"url": hooks.url(path)}})

        cancelled = submit(tiny, "/ok")  # no worker yet: cancelled while queued, by the API
        assert cluster.client.post(f"/v1/jobs/{cancelled}/cancel").json()["status"] == "cancelled"
        cluster.start_worker()
        succeeded, failed = submit(tiny, "/ok"), submit(broken, "/ok")
        retried, slow = submit(broken, "/fail"), submit(broken, "/slow")
        jobs = {job_id: cluster.wait_for(job_id) for job_id in (cancelled, succeeded, failed, retried, slow)}
        assert [jobs[j]["status"] for j in (succeeded, failed, retried, slow)] == ["succeeded", *["failed"] * 3]
        settled = {job_id: _settled(cluster, job_id) for job_id in jobs}

    # Exactly one event per terminal state, each signed under the server's secret.
    events = {json.loads(item.body)["job"]["id"]: item for item in hooks.on("/ok")}
    assert len(hooks.on("/ok")) == 3 and set(events) == {cancelled, succeeded, failed}
    for job_id, item in events.items():
        assert item.verified_with(SECRET)
        payload = json.loads(item.body)
        assert payload["event"] == f"job.{jobs[job_id]['status']}" == item.headers["x-prunesearch-event"]
        assert payload["job"]["finished_at"] is not None and payload["links"]["job"] == f"/v1/jobs/{job_id}"
        [delivery] = settled[job_id]
        assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    best = json.loads(events[succeeded].body)["best"]
    assert best["trial_number"] == jobs[succeeded]["best"]["trial_number"] and best["verified"]["kl"] is not None
    assert json.loads(events[failed].body)["job"]["error"]

    # A receiver answering 500: the first attempt and RETRIES retries, the same signed body, then failed.
    attempts = hooks.on("/fail")
    assert len(attempts) == 1 + RETRIES and len({item.body for item in attempts}) == 1
    assert all(item.verified_with(SECRET) for item in attempts)
    [delivery] = settled[retried]
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("failed", 1 + RETRIES, 500)

    # A receiver slower than the timeout: the job had ended before the first POST arrived; each
    # attempt timed out, and the delivery failed after the last retry.
    slow_posts = hooks.on("/slow")
    assert datetime.fromisoformat(jobs[slow]["finished_at"]).timestamp() <= slow_posts[0].at
    [delivery] = settled[slow]
    assert delivery["status"] == "failed" and delivery["attempts"] == 1 + RETRIES == len(slow_posts)
    assert "Timeout" in delivery["last_error"] and delivery["last_status_code"] is None
