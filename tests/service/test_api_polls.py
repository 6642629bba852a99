"""Polls on PostgreSQL: ETag / If-None-Match on a job and its trials, what a poll carries, and that
conditional answers are still authenticated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from search.results import Verification
from service import apikeys, repository
from service.models import ApiKey
from service.states import JobStatus
from tests.service.helpers import assert_problem, job_spec, trial_info

TEXTS = ["The first calibration text. " * 40, "A second one, shorter."]


@pytest.fixture
def job_id(pg_session: Session, tiny_model_config_dir: Path) -> str:
    spec = job_spec(tiny_model_config_dir, calibration={"texts": TEXTS, "n_samples": 4})
    job = repository.create_job(pg_session, spec=spec, model=str(tiny_model_config_dir), trials_total=20)
    pg_session.commit()
    return job.id


@pytest.fixture
def alice(clean_postgres: Engine, pg_session: Session) -> Iterator[str]:
    """An API key of owner alice (the server then refuses anonymous calls); removed after the test."""
    issued = apikeys.create_key(pg_session, "alice")
    pg_session.commit()
    yield issued.key
    with clean_postgres.begin() as connection:
        connection.execute(delete(ApiKey))


def _changed(client: TestClient, path: str, etag: str, headers: dict[str, str] | None = None) -> str:
    """Asserts that ``etag`` is no longer current for ``path``; returns the new one."""
    response = client.get(path, headers={"If-None-Match": etag} | (headers or {}))
    assert response.status_code == 200 and response.headers["etag"] != etag, response.headers
    return str(response.headers["etag"])


def test_job_and_trials_answer_304_until_something_changes(
    pg_client: TestClient, pg_session: Session, job_id: str
) -> None:
    repository.record_trial(pg_session, job_id, trial_info(0, "complete", value=1.0, param_ratio=0.6))
    pg_session.commit()
    paths = [f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/trials", f"/v1/jobs/{job_id}/trials?limit=1"]
    tags = {}
    for path in paths:
        first = pg_client.get(path)
        assert first.status_code == 200 and first.headers["cache-control"] == "private, no-cache"
        tag = tags[path] = first.headers["etag"]
        assert tag.startswith('"') and tag.endswith('"')  # strong
        for sent in (tag, f"W/{tag}", f'"other", {tag}', "*"):
            again = pg_client.get(path, headers={"If-None-Match": sent})
            assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag, sent
        # A client that sends no tag, or a stale one, gets the whole body as before.
        assert pg_client.get(path).json() == first.json()
        assert pg_client.get(path, headers={"If-None-Match": '"stale"'}).status_code == 200
    assert len(set(tags.values())) == len(paths)  # each page is its own representation

    # A new trial, a verification, a status change: each is a new version of the job and its pages.
    repository.record_trial(pg_session, job_id, trial_info(1, "complete", value=2.0, param_ratio=0.5))
    pg_session.commit()
    tags = {path: _changed(pg_client, path, tag) for path, tag in tags.items()}
    assert len(pg_client.get(f"/v1/jobs/{job_id}/trials").json()["items"]) == 2

    repository.record_verification(
        pg_session, job_id, 0, Verification(primary="perplexity", metrics={"perplexity": 12.5}, tokens=256)
    )
    pg_session.commit()
    tags = {path: _changed(pg_client, path, tag) for path, tag in tags.items()}
    assert pg_client.get(f"/v1/jobs/{job_id}/trials").json()["items"][0]["verified"] is not None

    assert pg_client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job_tag = _changed(pg_client, f"/v1/jobs/{job_id}", tags[f"/v1/jobs/{job_id}"])
    assert pg_client.get(f"/v1/jobs/{job_id}").json()["status"] == JobStatus.CANCELLED
    assert pg_client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": job_tag}).status_code == 304


def test_a_webhook_delivery_is_a_new_version_of_its_job(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    job = repository.create_job(
        pg_session,
        spec=job_spec(tiny_model_config_dir),
        model=str(tiny_model_config_dir),
        trials_total=20,
        notify={"url": "https://hooks.example.com/x", "key_id": None},
    )
    pg_session.commit()
    repository.request_cancel(pg_session, job.id)  # a queued job ends here: its delivery opens
    pg_session.commit()
    path = f"/v1/jobs/{job.id}"
    tag = pg_client.get(path).headers["etag"]
    (delivery_id,) = repository.unsent_deliveries(pg_session, job.id)
    assert repository.claim_delivery_attempt(pg_session, delivery_id, attempts_before=0) is not None
    pg_session.commit()
    tag = _changed(pg_client, path, tag)
    repository.record_delivery_attempt(pg_session, delivery_id, status="delivered", status_code=204, error=None)
    pg_session.commit()
    _changed(pg_client, path, tag)
    assert pg_client.get(path).json()["notify"]["deliveries"][0]["status"] == "delivered"


def test_the_job_leaves_out_inline_texts_and_links_the_whole_spec(pg_client: TestClient, job_id: str) -> None:
    job = pg_client.get(f"/v1/jobs/{job_id}").json()
    assert "texts" not in job["spec"]["calibration"] and job["spec"]["calibration"]["n_samples"] == 4
    assert job["spec_omitted"] == {"calibration.texts": {"items": 2, "chars": sum(map(len, TEXTS))}}
    assert job["links"]["spec"] == f"/v1/jobs/{job_id}/spec"

    whole = pg_client.get(job["links"]["spec"])
    assert whole.status_code == 200 and whole.json()["calibration"]["texts"] == TEXTS
    assert {name: value for name, value in whole.json().items() if name != "calibration"} == {
        name: value for name, value in job["spec"].items() if name != "calibration"
    }
    tag = whole.headers["etag"]
    assert pg_client.get(job["links"]["spec"], headers={"If-None-Match": tag}).status_code == 304

    # Listing and submitting answer the same poll-sized job.
    listed = pg_client.get("/v1/jobs").json()["items"][0]
    assert listed["spec"] == job["spec"] and listed["spec_omitted"] == job["spec_omitted"]


def test_a_job_without_inline_texts_omits_nothing(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    spec = job_spec(tiny_model_config_dir)
    job = repository.create_job(pg_session, spec=spec, model=str(tiny_model_config_dir), trials_total=20)
    pg_session.commit()
    answer = pg_client.get(f"/v1/jobs/{job.id}").json()
    assert answer["spec"] == spec and answer["spec_omitted"] == {}


def test_conditional_answers_need_a_valid_key_of_the_owner(
    pg_client: TestClient, pg_session: Session, alice: str, tiny_model_config_dir: Path
) -> None:
    spec = job_spec(tiny_model_config_dir, calibration={"texts": TEXTS, "n_samples": 4})
    job_id = repository.create_job(
        pg_session, spec=spec, model=str(tiny_model_config_dir), trials_total=20, owner="alice"
    ).id
    bob = apikeys.create_key(pg_session, "bob").key
    pg_session.commit()
    own = {"Authorization": f"Bearer {alice}"}
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/trials", f"/v1/jobs/{job_id}/spec"):
        tag = pg_client.get(path, headers=own).headers["etag"]
        assert pg_client.get(path, headers=own | {"If-None-Match": tag}).status_code == 304
        # The tag alone proves nothing: no key, a wrong key, another owner's key.
        assert_problem(pg_client.get(path, headers={"If-None-Match": tag}), 401)
        assert_problem(
            pg_client.get(path, headers={"If-None-Match": tag, "Authorization": f"Bearer {alice[:-4]}abcd"}), 401
        )
        assert_problem(
            pg_client.get(path, headers={"If-None-Match": tag, "Authorization": f"Bearer {bob}"}), 404, "does not exist"
        )
    # Revocation holds at once for conditional polls too.
    apikeys.revoke_key(pg_session, alice.split("_")[1])
    pg_session.commit()
    assert_problem(pg_client.get(f"/v1/jobs/{job_id}", headers=own | {"If-None-Match": "*"}), 401, "revoked")
