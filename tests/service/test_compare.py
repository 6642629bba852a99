"""``GET /v1/compare``: jobs of one model side by side, on the real migrated PostgreSQL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service import repository
from service.api.schemas import MAX_COMPARED_JOBS
from service.models import Job
from tests.service.helpers import assert_problem, best_entry, job_spec, trial_info

ARCH = {
    "layers": [
        {"attn": True, "mlp": True, "heads": 4, "ffn_channels": 96, "sparsity": 0.0},
        {"attn": False, "mlp": True, "heads": 0, "ffn_channels": 64, "sparsity": 0.0},
    ]
}
VERIFIED = {"kl": 0.12, "ppl": 31.5, "tokens": 252, "primary": "kl"}
DENSE = {"kl": 0.0, "ppl": 25.0, "tokens": 252, "primary": "kl"}


def _job(session: Session, model: Path, *, owner: str | None = None, **spec: Any) -> str:
    job_id = repository.create_job(
        session, spec=job_spec(model, **spec), model=str(model), trials_total=20, owner=owner
    ).id
    session.commit()
    return job_id


def _finished(session: Session, model: Path, values: list[tuple[float, float]], **spec: Any) -> str:
    """A job with complete trials (value, param_ratio), the first as its verified best, a report's dense figures."""
    job_id = _job(session, model, **spec)
    for number, (value, ratio) in enumerate(values):
        repository.record_trial(session, job_id, trial_info(number, value=value, param_ratio=ratio, arch=ARCH))
    value, ratio = values[0]
    repository.set_best(
        session, job_id, best_entry(0, arch=ARCH, score=value, param_ratio=ratio, param_count=1000, verified=VERIFIED)
    )
    job = session.get(Job, job_id)
    assert job is not None
    # The report's verification section is all a comparison reads of it.
    job.report = {"verification": {"primary": "kl", "dense": DENSE, "finalists": [], "ladder": []}}
    session.commit()
    return job_id


def test_compare_gives_each_job_its_front_best_architecture_and_figures(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    first = _finished(pg_session, tiny_model_config_dir, [(0.9, 0.6), (0.5, 0.4), (0.4, 0.5)], proxy="tracenas")
    second = _finished(pg_session, tiny_model_config_dir, [(0.7, 0.6)], proxy="kl", sampler="random")

    response = pg_client.get("/v1/compare", params={"jobs": f"{second}, {first}"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == str(tiny_model_config_dir)
    config = json.loads((tiny_model_config_dir / "config.json").read_text())
    assert body["widths"]["num_heads"] == config["num_attention_heads"]
    assert [job["id"] for job in body["jobs"]] == [second, first]  # in the order asked
    compared = {job["id"]: job for job in body["jobs"]}
    assert compared[second]["spec"]["proxy"] == "kl" and compared[second]["spec"]["sampler"] == "random"
    assert compared[first]["spec"]["target"]["param_ratio"] == 0.6
    assert compared[first]["spec"]["objectives"] == ["score"]
    for job_id in (first, second):
        job = compared[job_id]
        assert job["pareto"] == pg_client.get(f"/v1/jobs/{job_id}/pareto").json()
        assert job["best"]["arch"] == ARCH
        assert job["verified"] == {"primary": "kl", "best": VERIFIED, "dense": DENSE}
        assert job["status"] == "queued"
        assert job["progress"]["trials_completed"] == {first: 3, second: 1}[job_id]
    assert [t["number"] for t in compared[first]["pareto"]["items"]] == [1, 0]  # trial 2 is dominated


def test_a_job_without_results_compares_with_empty_figures(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    done = _finished(pg_session, tiny_model_config_dir, [(0.9, 0.6)])
    queued = _job(pg_session, tiny_model_config_dir)
    body = pg_client.get(f"/v1/compare?jobs={done},{queued}").json()
    empty = body["jobs"][1]
    assert empty["best"] is None and empty["pareto"]["items"] == []
    assert empty["verified"] == {"primary": None, "best": None, "dense": None}


def test_malformed_lists_are_422_naming_jobs(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    a = _job(pg_session, tiny_model_config_dir)
    b = _job(pg_session, tiny_model_config_dir)
    too_many = ",".join(f"{n:032x}" for n in range(MAX_COMPARED_JOBS + 1))
    for jobs, says in [
        (a, "1 job(s) given"),
        (f"{a},,{b}", "without empty entries"),
        (f"{a},", "without empty entries"),
        (f"{a},{b},{a}", "listed twice"),
        (too_many, f"2 to {MAX_COMPARED_JOBS} jobs"),
    ]:
        problem = assert_problem(pg_client.get("/v1/compare", params={"jobs": jobs}), 422, says)
        assert problem["errors"][0]["loc"] == ["query", "jobs"], problem
    problem = assert_problem(pg_client.get("/v1/compare"), 422)
    assert problem["errors"][0]["loc"] == ["query", "jobs"]


def test_jobs_of_different_models_are_422_naming_both(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path, tmp_path: Path
) -> None:
    other_model = shutil.copytree(tiny_model_config_dir, tmp_path / "other-model")
    a = _job(pg_session, tiny_model_config_dir)
    b = _job(pg_session, other_model)
    problem = assert_problem(pg_client.get(f"/v1/compare?jobs={a},{b}"), 422, "the same model")
    assert problem["errors"][0]["loc"] == ["query", "jobs"]
    assert str(other_model) in problem["detail"] and a in problem["detail"]


def test_unknown_jobs_and_other_owners_jobs_are_404_naming_them(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    mine = _job(pg_session, tiny_model_config_dir)
    theirs = _job(pg_session, tiny_model_config_dir, owner="bob")  # the client is the anonymous user
    missing = "f" * 32
    assert_problem(pg_client.get(f"/v1/compare?jobs={mine},{missing}"), 404, repr(missing))
    assert_problem(pg_client.get(f"/v1/compare?jobs={mine},{theirs}"), 404, repr(theirs))
    assert_problem(pg_client.get(f"/v1/compare?jobs={mine},not-a-job"), 404, "'not-a-job'")
