"""POST /v1/jobs refuses at once, with a 422 that says why, the jobs that used to be accepted and fail
later (issue 17 items 4-6); nothing is stored or enqueued."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from huggingface_hub import constants
from sqlalchemy import Engine

from tests.service.helpers import assert_problem, count_jobs, job_spec

REFERENCE_MODEL = Path(__file__).resolve().parents[2] / "models" / "ref-llama-7m"
SHORT_TEXTS = ["A few sentences of calibration text.", "Far too little for thirty-two windows of 256 tokens."]


def assert_nothing_created(engine: Engine, redis_client: redis.Redis) -> None:
    assert count_jobs(engine) == 0
    assert redis_client.llen("celery") == 0


def test_a_mistyped_model_path_is_refused_while_the_hub_is_offline(
    pg_client: TestClient,
    redis_client: redis.Redis,
    clean_postgres: Engine,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.chdir(tmp_path)  # no models/ folder here: "models/ref-llama-70m" reads as a hub id

    started = time.monotonic()
    response = pg_client.post("/v1/jobs", json=job_spec(Path("models/ref-llama-70m")))

    assert time.monotonic() - started < 2.0
    problem = assert_problem(response, 422, "model 'models/ref-llama-70m': no such directory; not a cached hub model")
    assert "HF_HUB_OFFLINE" in problem["detail"]
    assert_nothing_created(clean_postgres, redis_client)


@pytest.mark.parametrize("where", ["texts", "source"])
def test_calibration_texts_too_short_for_the_windows_are_refused(
    where: str, pg_client: TestClient, redis_client: redis.Redis, clean_postgres: Engine, tmp_path: Path
) -> None:
    sizes = {"n_samples": 16, "seq_len": 256, "heldout_samples": 16}
    if where == "texts":
        calibration = {"texts": SHORT_TEXTS, **sizes}
    else:
        (tmp_path / "calibration.txt").write_text("\n\n".join(SHORT_TEXTS))
        calibration = {"source": str(tmp_path / "calibration.txt"), **sizes}

    response = pg_client.post("/v1/jobs", json=job_spec(REFERENCE_MODEL, calibration=calibration))

    problem = assert_problem(response, 422, "calibration texts give ")
    assert "windows of 256; 32 are needed (16 calibration + 16 held-out)" in problem["detail"]
    assert problem["error_class"] == "CalibrationError"
    assert_nothing_created(clean_postgres, redis_client)


def test_calibration_texts_that_suffice_are_accepted(pg_client: TestClient) -> None:
    calibration = {"texts": SHORT_TEXTS, "n_samples": 1, "seq_len": 16, "heldout_samples": 1}
    response = pg_client.post("/v1/jobs", json=job_spec(REFERENCE_MODEL, calibration=calibration))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "application/x-www-form-urlencoded"}, {"Content-Type": "text/plain; charset=utf-8"}],
    ids=["none", "curl -d default", "text"],
)
def test_a_job_sent_without_the_json_content_type_is_told_what_to_add(
    headers: dict[str, str],
    pg_client: TestClient,
    redis_client: redis.Redis,
    clean_postgres: Engine,
    tiny_model_config_dir: Path,
) -> None:
    body = json.dumps(job_spec(tiny_model_config_dir)).encode()

    response = pg_client.post("/v1/jobs", content=body, headers=headers)

    problem = assert_problem(response, 422, "send the job as JSON with the header Content-Type: application/json")
    assert "valid dictionary" not in problem["detail"]
    assert_nothing_created(clean_postgres, redis_client)


@pytest.mark.parametrize(
    ("search_space", "loc", "detail"),
    [
        ({"export_format": "standard", "depth": "sublayer"}, ["body", "search_space", "export_format"], "'sublayer'"),
        ({"export_format": "standard", "depth": "none", "width": False}, None, "cannot be reached in the standard"),
    ],
    ids=["sublayer", "unreachable budget"],
)
def test_a_standard_search_it_cannot_run_is_refused(
    search_space: dict[str, object],
    loc: list[str] | None,
    detail: str,
    pg_client: TestClient,
    redis_client: redis.Redis,
    clean_postgres: Engine,
) -> None:
    body = job_spec(REFERENCE_MODEL, target={"param_ratio": 0.4}, search_space=search_space)

    problem = assert_problem(pg_client.post("/v1/jobs", json=body), 422, detail)

    if loc is not None:
        assert [error["loc"] for error in problem["errors"]] == [loc]
    assert_nothing_created(clean_postgres, redis_client)


def test_a_standard_search_is_accepted(pg_client: TestClient) -> None:
    body = job_spec(REFERENCE_MODEL, target={"param_ratio": 0.5}, search_space={"export_format": "standard"})
    response = pg_client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    space = response.json()["spec"]["search_space"]
    assert (space["export_format"], space["depth"]) == ("standard", "layer")  # whole layers when left out
