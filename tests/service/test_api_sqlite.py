"""The embedded default: SQLite file + filesystem broker, no services needed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from service.db import make_engine
from service.settings import Settings
from tests.service.helpers import assert_problem, count_jobs, job_spec


def _broker_messages(settings: Settings) -> list[dict[str, object]]:
    folder = settings.broker_dir / "out"
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.msg"))]


def test_submit_on_sqlite_and_filesystem_broker(
    client_for: Callable[[Settings], TestClient], sqlite_settings: Settings, tiny_model_config_dir: Path
) -> None:
    assert sqlite_settings.broker_url == "filesystem://"
    client = client_for(sqlite_settings)
    engine = make_engine(sqlite_settings.database_url)

    response = client.post("/v1/jobs", json=job_spec(tiny_model_config_dir), headers={"Idempotency-Key": "one"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    messages = _broker_messages(sqlite_settings)
    assert len(messages) == 1 and messages[0]["headers"]["task"] == "prunesearch.run_job"  # type: ignore[index]

    again = client.post("/v1/jobs", json=job_spec(tiny_model_config_dir), headers={"Idempotency-Key": "one"})
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert [item["id"] for item in client.get("/v1/jobs").json()["items"]] == [job["id"]]

    assert_problem(client.post("/v1/jobs", json=job_spec(tiny_model_config_dir, n_trials=0)), 422, "n_trials")
    assert count_jobs(engine) == 1 and len(_broker_messages(sqlite_settings)) == 1

    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert client.get("/readyz").json() == {"status": "ready", "database": "ok", "broker": "ok"}
    engine.dispose()
