"""The user's flow against a running service, shared by the production-shape and embedded tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.e2e.processes import TERMINAL, wait_until

TARGET = 0.6


def job_body(model: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "model": str(model),
        "target": {"param_ratio": TARGET},
        "n_trials": 12,
        "proxy": "tracenas",
        "seed": 1,
        "verify_top_k": 3,
        "calibration": {"n_samples": 4, "seq_len": 64, "heldout_samples": 4},
        "search_space": {"ffn_alignment": 8},
    } | overrides


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    return str(job["id"])


def wait_for(client: httpx.Client, job_id: str, statuses: set[str], *, timeout: float = 240) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return wait_until(reached, timeout=timeout, what=f"job {job_id} to reach {sorted(statuses)}")


def all_trials(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    trials: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"/v1/jobs/{job_id}/trials", params=params).json()
        trials.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return trials


def check_completed_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job = wait_for(client, job_id, TERMINAL)
    assert job["status"] == "succeeded", job
    progress = job["progress"]
    assert progress["trials_completed"] == progress["trials_total"] == 12
    trials = all_trials(client, job_id)
    complete = [t for t in trials if t["state"] == "complete"]
    assert len(complete) == 12
    assert [t["origin"] for t in trials[:2]] == ["seed:uniform", "seed:block_influence"]
    for trial in complete:
        assert abs(trial["param_ratio"] - TARGET) <= 0.01 * TARGET
        assert trial["scores"]["tracenas"] == trial["value"]
    verified = [t for t in trials if t["verified"] is not None]
    # the 3 best by proxy, plus the baseline seeds, are verified
    assert {t["origin"] for t in verified} >= {"seed:uniform", "seed:block_influence"}
    assert 3 <= len(verified) <= 5
    best = job["best"]
    assert abs(best["param_ratio"] - TARGET) <= 0.01 * TARGET
    assert best["verified"]["kl"] == min(t["verified"]["kl"] for t in verified)
    assert job["started_at"] and job["finished_at"] and job["error"] is None
    return job


def check_cancel(client: httpx.Client, model: Path) -> None:
    job_id = submit(client, job_body(model, n_trials=5000, verify_top_k=1))

    def some_trials_done() -> bool:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job["status"] == "running" and job["progress"]["trials_completed"] >= 3

    wait_until(some_trials_done, timeout=180, what="the long job to run a few trials")
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202, response.text
    job = wait_for(client, job_id, TERMINAL, timeout=60)
    assert job["status"] == "cancelled", job
    done = job["progress"]["trials_completed"]
    assert 3 <= done < 5000
    kept = [t for t in all_trials(client, job_id) if t["state"] == "complete"]
    assert len(kept) == done  # trials already done are kept
    assert job["best"] is not None
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")


def check_failing_job(client: httpx.Client, broken_model: Path) -> None:
    job_id = submit(client, job_body(broken_model))
    job = wait_for(client, job_id, TERMINAL, timeout=120)
    assert job["status"] == "failed"
    assert "cannot load model" in job["error"]


def check_report_and_artifacts(client: httpx.Client, job_id: str, tmp_path: Path) -> None:
    """The best candidate was exported as a smaller model; another trial exports on request."""
    import io
    import tarfile

    from search.export import load_pruned

    job = client.get(f"/v1/jobs/{job_id}").json()
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    export = report["export"]
    assert export["param_count"] == job["best"]["param_count"] < export["dense_params"]
    assert export["size_bytes"] > export["weights_bytes"] > 0 and export["dtype"] == "float32"  # the tiny model's
    assert export["speed"]["prefill"][0]["pruned_s"] > 0 and export["speed"]["dtype"] == "float32"
    assert 3 <= len(report["verification"]["finalists"]) <= 5

    listing = client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    best = next(item for item in listing if item["name"] == "best")
    assert best["status"] == "ready" and best["provenance"]["trial_number"] == job["best"]["trial_number"]
    archive = client.get(best["archive_url"])
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    model = load_pruned(tmp_path / "best")
    assert sum(p.numel() for p in model.parameters()) == export["param_count"]

    other = next(t for t in all_trials(client, job_id) if t["number"] != job["best"]["trial_number"])
    response = client.post(f"/v1/jobs/{job_id}/trials/{other['number']}/export")
    assert response.status_code == 202, response.text

    def exported() -> bool:
        items = client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
        return any(i["name"] == f"trial-{other['number']}" and i["status"] == "ready" for i in items)

    wait_until(exported, timeout=120, what=f"trial {other['number']} to be exported")
