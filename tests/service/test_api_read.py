"""Listing, reading, trials, cancelling and the error surface, on PostgreSQL + Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service import repository
from service.api.app import create_app
from service.settings import Settings
from tests.service.helpers import TEST_PAGE_MAX, assert_problem, best_entry, job_spec, trial_info


def _create_jobs(session: Session, model: Path, count: int) -> list[str]:
    ids = []
    for index in range(count):
        spec = job_spec(model, n_trials=10 + index)
        ids.append(repository.create_job(session, spec=spec, model=str(model), trials_total=10 + index).id)
    session.commit()
    return ids


def test_list_pages_newest_first_with_cursor(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    ids = _create_jobs(pg_session, tiny_model_config_dir, 5)

    seen: list[str] = []
    page = pg_client.get("/v1/jobs", params={"limit": 2}).json()
    pages = 1
    while page["next"] is not None:
        seen += [job["id"] for job in page["items"]]
        assert page["next"].startswith("/v1/jobs?limit=2&cursor=")
        page = pg_client.get(page["next"]).json()
        pages += 1
    seen += [job["id"] for job in page["items"]]

    assert pages == 3
    assert seen == list(reversed(ids))
    assert page["next_cursor"] is None


def test_list_filters_by_status(pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path) -> None:
    ids = _create_jobs(pg_session, tiny_model_config_dir, 4)
    for job_id in ids[:3]:
        assert pg_client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202

    first = pg_client.get("/v1/jobs", params={"status": "cancelled", "limit": 2}).json()
    assert "status=cancelled" in first["next"]
    second = pg_client.get(first["next"]).json()
    cancelled = [job["id"] for job in first["items"] + second["items"]]
    assert cancelled == list(reversed(ids[:3])) and second["next"] is None
    queued = pg_client.get("/v1/jobs", params={"status": "queued"}).json()["items"]
    assert [job["id"] for job in queued] == [ids[3]]


def test_list_rejects_bad_parameters(pg_client: TestClient) -> None:
    assert_problem(pg_client.get("/v1/jobs", params={"status": "lost"}), 422, "query.status")
    assert_problem(pg_client.get("/v1/jobs", params={"limit": 0}), 422, "query.limit")
    assert_problem(pg_client.get("/v1/jobs", params={"limit": TEST_PAGE_MAX + 1}), 422, "maximum page size")
    assert_problem(pg_client.get("/v1/jobs", params={"cursor": "not-a-cursor"}), 400, "invalid cursor")


def test_trials_page_by_number(pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path) -> None:
    (job_id,) = _create_jobs(pg_session, tiny_model_config_dir, 1)
    for number in (3, 0, 4, 1, 2):  # recorded out of order, listed by number
        # The tokens that scored it (the token schedule): trial 0 leaves them out (all of them).
        record = trial_info(number, "complete", value=0.5 + number, param_ratio=0.6, tokens=number * 126 or None)
        repository.record_trial(pg_session, job_id, record)
    pg_session.commit()

    first = pg_client.get(f"/v1/jobs/{job_id}/trials", params={"limit": 2}).json()
    assert [trial["number"] for trial in first["items"]] == [0, 1]
    second = pg_client.get(first["next"]).json()
    third = pg_client.get(second["next"]).json()
    assert [trial["number"] for trial in second["items"] + third["items"]] == [2, 3, 4]
    assert third["next"] is None
    assert first["items"][1]["value"] == 1.5 and first["items"][1]["state"] == "complete"
    assert [trial["tokens"] for trial in first["items"] + second["items"]] == [None, 126, 252, 378]
    assert pg_client.get(f"/v1/jobs/{job_id}").json()["progress"]["trials_completed"] == 5

    assert_problem(pg_client.get("/v1/jobs/nope/trials"), 404, "job 'nope' does not exist")
    assert_problem(pg_client.get(f"/v1/jobs/{job_id}/trials", params={"cursor": "!!"}), 400, "invalid cursor")


def test_nan_never_breaks_json_output(pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path) -> None:
    (job_id,) = _create_jobs(pg_session, tiny_model_config_dir, 1)
    nan, inf = float("nan"), float("inf")
    repository.record_trial(
        pg_session,
        job_id,
        trial_info(
            0,
            "complete",
            origin="seed:uniform",
            value=nan,
            values=[1.0, -inf],
            param_ratio=inf,
            scores={"tracenas": nan},
            timings={"proxy_s": inf},
            duration_s=nan,
        ),
    )
    repository.set_best(pg_session, job_id, best_entry(0, score=nan, scores={"tracenas": inf}))
    pg_session.commit()

    trial = pg_client.get(f"/v1/jobs/{job_id}/trials").json()["items"][0]
    assert trial["value"] is None and trial["param_ratio"] is None and trial["duration_s"] is None
    # Nested too: inside the objective values, the scores and the timings.
    assert trial["values"] == [1.0, None]
    assert trial["scores"] == {"tracenas": None} and trial["timings"] == {"proxy_s": None}
    best = pg_client.get(f"/v1/jobs/{job_id}").json()["best"]
    assert best["trial_number"] == 0 and best["score"] is None and best["scores"] == {"tracenas": None}


def test_cancel_queued_then_terminal(pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path) -> None:
    (job_id,) = _create_jobs(pg_session, tiny_model_config_dir, 1)

    response = pg_client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "cancelled" and job["finished_at"] is not None and job["cancel_requested"] is True

    problem = assert_problem(pg_client.post(f"/v1/jobs/{job_id}/cancel"), 409, "already cancelled")
    assert problem["job_status"] == "cancelled"
    assert_problem(pg_client.post("/v1/jobs/nope/cancel"), 404, "does not exist")


def test_cancel_running_asks_the_worker(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    (job_id,) = _create_jobs(pg_session, tiny_model_config_dir, 1)
    assert repository.claim_job(pg_session, job_id, worker="w1", stale_after_s=300)

    job = pg_client.post(f"/v1/jobs/{job_id}/cancel").json()
    assert job["status"] == "running" and job["cancel_requested"] is True
    assert repository.is_cancel_requested(pg_session, job_id)


def test_running_job_has_an_eta(pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path) -> None:
    (job_id,) = _create_jobs(pg_session, tiny_model_config_dir, 1)  # 10 trials
    assert repository.claim_job(pg_session, job_id, worker="w1", stale_after_s=300)
    assert pg_client.get(f"/v1/jobs/{job_id}").json()["progress"]["eta_seconds"] is None
    repository.record_trial(pg_session, job_id, trial_info(0, "complete", value=1.0))
    repository.record_trial(pg_session, job_id, trial_info(1, "failed", error="oom"))
    pg_session.commit()

    progress = pg_client.get(f"/v1/jobs/{job_id}").json()["progress"]
    assert progress["trials_completed"] == 1 and progress["trials_failed"] == 1
    assert progress["fraction"] == 0.2
    assert progress["eta_seconds"] is not None and progress["eta_seconds"] >= 0


def test_health_and_readiness(
    pg_client: TestClient, client_for: Callable[[Settings], TestClient], pg_settings: Settings
) -> None:
    assert pg_client.get("/healthz").json() == {"status": "ok"}
    ready = pg_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "broker": "ok"}

    broken = client_for(pg_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    problem = assert_problem(broken.get("/readyz"), 503, "broker unreachable")
    assert problem["checks"] == {"database": "ok", "broker": "unreachable"}


def test_unknown_routes_and_methods_are_problems(pg_client: TestClient) -> None:
    assert_problem(pg_client.get("/v1/nothing-here"), 404, "/v1/nothing-here")
    assert_problem(pg_client.get("/v1/jobs/0123456789abcdef"), 404, "job '0123456789abcdef' does not exist")
    response = pg_client.delete("/v1/jobs")
    assert_problem(response, 405, "DELETE")
    assert "POST" in response.headers["allow"]


def test_unexpected_errors_are_500_problems_without_traceback(pg_settings: Settings) -> None:
    app = create_app(pg_settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert_problem(response, 500, "unexpected error")
    assert "secret internals" not in response.text


def test_openapi_documents_problem_json(pg_client: TestClient) -> None:
    schema = pg_client.get("/openapi.json").json()
    submit = schema["paths"]["/v1/jobs"]["post"]["responses"]
    assert set(submit) >= {"202", "200", "400", "422", "503"}
    for status in ("400", "422", "503"):
        assert submit[status]["content"] == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    cancel = schema["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    assert "application/problem+json" in cancel["409"]["content"]
    assert "Problem" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "JobSubmission" in schema["components"]["schemas"]  # JobSpec and its notify
