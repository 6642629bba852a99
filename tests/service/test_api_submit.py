"""POST /v1/jobs on a real migrated PostgreSQL database and the real Redis broker."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.broker import RUN_JOB_TASK
from service.settings import Settings
from tests.service.helpers import TEST_MAX_TRIALS, assert_problem, count_jobs, job_spec


def _queued_job_ids(redis_client: redis.Redis) -> list[str]:
    """The job ids of the run-job messages waiting in Celery's default Redis list."""
    ids = []
    for raw in redis_client.lrange("celery", 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == RUN_JOB_TASK
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(args[0])
    return ids


def test_submit_answers_202_with_location_and_enqueues_by_id(
    pg_client: TestClient, redis_client: redis.Redis, tiny_model_config_dir: Path
) -> None:
    response = pg_client.post("/v1/jobs", json=job_spec(tiny_model_config_dir))

    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["retry-after"] == "2"
    assert job["status"] == "queued"
    assert job["model"] == str(tiny_model_config_dir)
    assert job["spec"]["n_trials"] == 20 and job["spec"]["sampler"] == "evo"  # defaults filled in
    assert job["progress"] == {
        "trials_completed": 0,
        "trials_failed": 0,
        "trials_total": 20,
        "fraction": 0.0,
        "eta_seconds": None,
        "phase": None,
    }
    assert job["best"] is None and job["error"] is None and job["cancel_requested"] is False
    assert job["links"] == {
        "self": f"/v1/jobs/{job['id']}",
        "spec": f"/v1/jobs/{job['id']}/spec",
        "trials": f"/v1/jobs/{job['id']}/trials",
        "cancel": f"/v1/jobs/{job['id']}/cancel",
        "resume": f"/v1/jobs/{job['id']}/resume",
    }
    assert _queued_job_ids(redis_client) == [job["id"]]

    fetched = pg_client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json()["id"] == job["id"] and fetched.json()["created_at"] == job["created_at"]


def test_idempotency_key_returns_the_first_job(
    pg_client: TestClient, redis_client: redis.Redis, tiny_model_config_dir: Path, clean_postgres: Engine
) -> None:
    body = job_spec(tiny_model_config_dir)
    first = pg_client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "retry-me"})
    again = pg_client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "retry-me"})

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert count_jobs(clean_postgres) == 1
    assert len(_queued_job_ids(redis_client)) == 1

    other = pg_client.post(
        "/v1/jobs", json=job_spec(tiny_model_config_dir, n_trials=21), headers={"Idempotency-Key": "retry-me"}
    )
    assert_problem(other, 422, "Idempotency-Key 'retry-me' was already used")
    assert count_jobs(clean_postgres) == 1


def _write_config(tmp_path: Path, config: dict[str, Any] | None) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    if config is not None:
        (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


# (case id, build the request content from the tiny model dir and tmp_path, status, detail fragment)
_Build = Callable[[Path, Path], dict[str, Any] | str]
REJECTIONS: list[tuple[str, _Build, int, str]] = [
    ("unknown model path", lambda m, t: job_spec(t / "no-such-model"), 422, "does not exist"),
    ("model dir without config.json", lambda m, t: job_spec(_write_config(t, None)), 422, "has no config.json"),
    (
        "unsupported model_type",
        lambda m, t: job_spec(_write_config(t, {"model_type": "gpt_neox"})),
        422,
        "supported: llama, mistral, qwen2, qwen3",
    ),
    ("param_ratio 0", lambda m, t: job_spec(m, target={"param_ratio": 0}), 422, "body.target.param_ratio"),
    ("param_ratio 1.5", lambda m, t: job_spec(m, target={"param_ratio": 1.5}), 422, "less than or equal to 1"),
    ("param_ratio -1", lambda m, t: job_spec(m, target={"param_ratio": -1}), 422, "greater than 0"),
    ("param_ratio abc", lambda m, t: job_spec(m, target={"param_ratio": "abc"}), 422, "valid number"),
    (
        "param_ratio NaN",
        lambda m, t: json.dumps(job_spec(m, target={"param_ratio": float("nan")})),  # Python writes a bare NaN
        422,
        "finite number",
    ),
    ("n_trials 0", lambda m, t: job_spec(m, n_trials=0), 422, "body.n_trials"),
    ("n_trials above max", lambda m, t: job_spec(m, n_trials=TEST_MAX_TRIALS + 1), 422, f"limit of {TEST_MAX_TRIALS}"),
    ("unknown proxy", lambda m, t: job_spec(m, proxy="vibes"), 422, "unknown proxy 'vibes'; available: tracenas"),
    ("unknown sampler", lambda m, t: job_spec(m, sampler="dice"), 422, "unknown sampler 'dice'"),
    ("malformed JSON", lambda m, t: '{"model": "x", "target": ', 400, "not valid JSON"),
    ("extra unknown field", lambda m, t: job_spec(m, colour="blue"), 422, "body.colour: Extra inputs"),
    ("missing target", lambda m, t: {"model": str(m)}, 422, "body.target: Field required"),
    (
        "unreachable budget",
        lambda m, t: job_spec(m, target={"param_ratio": 0.2}),
        422,
        "embeddings alone are 0.307",
    ),
    ("latency_ratio 0", lambda m, t: job_spec(m, target={"latency_ratio": 0}), 422, "body.target.latency_ratio"),
    ("latency_ratio 1.5", lambda m, t: job_spec(m, target={"latency_ratio": 1.5}), 422, "body.target.latency_ratio"),
    (
        "unknown latency phase",
        lambda m, t: job_spec(m, target={"latency_ratio": 0.5, "latency": {"phase": "train"}}),
        422,
        "body.target.latency.phase",
    ),
    (
        "latency batch above the server's limit",
        lambda m, t: job_spec(m, target={"latency_ratio": 0.5, "latency": {"batch": 300}}),
        422,
        "target.latency.batch 300 is above this server's limit of 256",
    ),
    (
        "latency context above the server's limit",
        lambda m, t: job_spec(m, target={"latency_ratio": 0.5, "latency": {"context": 5000}}),
        422,
        "target.latency.context 5000 is above this server's limit",
    ),
    (
        "latency context beyond the model's positions",
        lambda m, t: job_spec(m, target={"latency_ratio": 0.5, "latency": {"context": 4000}}),
        422,
        "target.latency.context 4000 is beyond this model's",
    ),
    (
        "latency objective with the standard export",
        lambda m, t: job_spec(m, objectives=["score", "latency"], search_space={"export_format": "standard"}),
        422,
        "needs export_format 'per_layer'",
    ),
    ("no budget at all", lambda m, t: job_spec(m, target={}), 422, "target needs param_ratio, latency_ratio or both"),
    (
        "alignment too coarse for the budget",
        lambda m, t: job_spec(m, search_space={"ffn_alignment": 64}),
        422,
        "ffn_alignment=64 is too coarse",
    ),
]


@pytest.mark.parametrize(("build", "status", "detail"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_rejected_submissions_are_problems_and_create_nothing(
    pg_client: TestClient,
    redis_client: redis.Redis,
    clean_postgres: Engine,
    tiny_model_config_dir: Path,
    tmp_path: Path,
    build: _Build,
    status: int,
    detail: str,
) -> None:
    content = build(tiny_model_config_dir, tmp_path)
    if isinstance(content, str):
        response = pg_client.post("/v1/jobs", content=content, headers={"Content-Type": "application/json"})
    else:
        response = pg_client.post("/v1/jobs", json=content)

    problem = assert_problem(response, status, detail)
    assert problem["instance"] == "/v1/jobs"
    if status == 422 and "errors" in problem:
        assert all({"loc", "msg", "type"} <= error.keys() for error in problem["errors"])
    assert count_jobs(clean_postgres) == 0
    assert redis_client.llen("celery") == 0


def test_field_errors_are_listed(pg_client: TestClient, tiny_model_config_dir: Path) -> None:
    body = job_spec(tiny_model_config_dir, target={"param_ratio": 2}, n_trials=0)
    problem = assert_problem(pg_client.post("/v1/jobs", json=body), 422)
    locations = {tuple(error["loc"]) for error in problem["errors"]}
    assert locations == {("body", "target", "param_ratio"), ("body", "n_trials")}


def test_unreachable_broker_answers_503_and_leaves_no_job(
    client_for: Callable[[Settings], TestClient],
    pg_settings: Settings,
    tiny_model_config_dir: Path,
    clean_postgres: Engine,
) -> None:
    # A real fault: nothing listens on port 1.
    client = client_for(pg_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    response = client.post("/v1/jobs", json=job_spec(tiny_model_config_dir), headers={"Idempotency-Key": "k"})

    assert_problem(response, 503, "task queue is unreachable")
    assert count_jobs(clean_postgres) == 0
