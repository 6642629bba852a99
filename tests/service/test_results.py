"""Pareto front, report, artifacts (listing, files, tar, path safety) and export requests.

On the real migrated PostgreSQL and the real Redis broker. Exports are fake directories of plain
files written here: these tests are about the API, not about exporting models.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from search.results import JobReport
from service import repository
from service.broker import EXPORT_TRIAL_TASK
from service.models import Job
from service.settings import Settings
from tests.service.helpers import assert_problem, job_spec, trial_info

PROVENANCE = {"base_model": "tiny-llama", "revision": "abc123", "kept_layers": [0, 2, 3]}


def _job(session: Session, model: Path, **spec_overrides: Any) -> str:
    spec = job_spec(model, **spec_overrides)
    job_id = repository.create_job(session, spec=spec, model=str(model), trials_total=20).id
    session.commit()
    return job_id


def _trial(session: Session, job_id: str, number: int, state: str = "complete", **fields: Any) -> None:
    repository.record_trial(session, job_id, trial_info(number, state, **fields))
    session.commit()


def _queued(redis_client: redis.Redis) -> list[tuple[str, list[Any]]]:
    """(task name, args) of every message waiting in Celery's default Redis list."""
    messages = []
    for raw in redis_client.lrange("celery", 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append((message["headers"]["task"], args))
    return messages


def _write_export(directory: Path) -> dict[str, bytes]:
    """A fake export: nested files, a binary one, a provenance file. Returns {path: bytes}."""
    files = {
        "config.json": b'{"model_type": "llama", "num_hidden_layers": 3}',
        "model.safetensors": bytes(range(256)) * 41 + b"tail",  # not a multiple of 512
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
        "provenance.json": json.dumps(PROVENANCE).encode(),
        "empty.txt": b"",
    }
    for relative, content in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


# --- Pareto front ----------------------------------------------------------------------------------


def test_pareto_of_single_objective_job_trades_score_for_size(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    job_id = _job(pg_session, tiny_model_config_dir)
    assert pg_client.get(f"/v1/jobs/{job_id}/pareto").json()["items"] == []
    _trial(pg_session, job_id, 0, value=0.9, param_ratio=0.8)
    _trial(pg_session, job_id, 1, value=0.5, param_ratio=0.4)
    _trial(pg_session, job_id, 2, value=0.4, param_ratio=0.5)  # dominated by 1
    _trial(pg_session, job_id, 3, value=0.7, param_ratio=0.6)
    _trial(pg_session, job_id, 4, value=0.7, param_ratio=0.6)  # a duplicate of 3 stays
    _trial(pg_session, job_id, 5, state="failed", error="proxy NaN")
    _trial(pg_session, job_id, 6, state="pruned", value=0.99, param_ratio=0.1)  # not complete
    _trial(pg_session, job_id, 7, value=float("nan"), param_ratio=0.2)  # scrubbed to null: left out

    response = pg_client.get(f"/v1/jobs/{job_id}/pareto")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["objectives"] == [
        {"name": "score", "direction": "maximize"},
        {"name": "params", "direction": "minimize"},
    ]
    assert [trial["number"] for trial in body["items"]] == [1, 3, 4, 0]
    assert body["items"][0]["value"] == 0.5 and body["items"][0]["values"] is None


def test_pareto_of_multi_objective_job_reads_values(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    job_id = _job(pg_session, tiny_model_config_dir)
    job = pg_session.get(Job, job_id)
    assert job is not None
    # Submitted by a spec that has objectives; set here so the test does not depend on search.spec.
    job.spec = {**job.spec, "objectives": ["score", "params"]}
    pg_session.commit()
    _trial(pg_session, job_id, 0, param_ratio=0.9, values=[0.9, 0.9])
    _trial(pg_session, job_id, 1, param_ratio=0.5, values=[0.6, 0.5])
    _trial(pg_session, job_id, 2, param_ratio=0.5, values=[0.5, 0.5])  # dominated by 1
    _trial(pg_session, job_id, 3, param_ratio=0.3, values=[float("inf"), 0.3])  # scrubbed: left out
    _trial(pg_session, job_id, 4, param_ratio=0.3, value=0.8)  # no values: left out

    body = pg_client.get(f"/v1/jobs/{job_id}/pareto").json()

    assert [objective["name"] for objective in body["objectives"]] == ["score", "params"]
    assert [trial["number"] for trial in body["items"]] == [1, 0]
    assert body["items"][0]["values"] == [0.6, 0.5]
    trials = pg_client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    assert [trial["values"] for trial in trials] == [[0.9, 0.9], [0.6, 0.5], [0.5, 0.5], [None, 0.3], None]


def test_pareto_of_latency_job_gives_predicted_and_measured_latency(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    from search.results import Verification

    job_id = _job(pg_session, tiny_model_config_dir)
    job = pg_session.get(Job, job_id)
    assert job is not None
    job.spec = {**job.spec, "objectives": ["score", "latency"]}
    pg_session.commit()
    _trial(pg_session, job_id, 0, param_ratio=0.9, values=[0.9, 8.0], latency_ms=8.0)
    _trial(pg_session, job_id, 1, param_ratio=0.5, values=[0.6, 4.0], latency_ms=4.0)
    _trial(pg_session, job_id, 2, param_ratio=0.4, values=[0.5, 5.0], latency_ms=5.0)  # dominated by 1
    measured = Verification(primary="kl", metrics={"kl": 0.1, "latency_ms": 4.4}, tokens=64)
    repository.record_verification(pg_session, job_id, 1, measured)
    pg_session.commit()

    body = pg_client.get(f"/v1/jobs/{job_id}/pareto").json()

    assert body["objectives"][1] == {"name": "latency", "direction": "minimize"}
    points = {point["number"]: point for point in body["items"]}
    assert sorted(points) == [0, 1]
    assert points[1]["latency_ms"] == 4.0 and points[1]["measured_latency_ms"] == 4.4
    assert points[0]["latency_ms"] == 8.0 and points[0]["measured_latency_ms"] is None  # not verified


def test_pareto_and_report_of_unknown_job_are_404(pg_client: TestClient) -> None:
    assert_problem(pg_client.get("/v1/jobs/nope/pareto"), 404, "does not exist")
    assert_problem(pg_client.get("/v1/jobs/nope/report"), 404, "does not exist")
    assert_problem(pg_client.get("/v1/jobs/nope/artifacts"), 404, "does not exist")


# --- model --------------------------------------------------------------------------------------


def test_model_gives_the_dense_widths_or_404_when_its_config_cannot_be_read(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    config = json.loads((tiny_model_config_dir / "config.json").read_text())
    job_id = _job(pg_session, tiny_model_config_dir)
    widths = pg_client.get(f"/v1/jobs/{job_id}/model").json()
    assert widths["num_heads"] == config["num_attention_heads"]
    assert widths["intermediate_size"] == config["intermediate_size"]
    assert widths["num_layers"] == config["num_hidden_layers"] and widths["dense_params"] > 0
    (tiny_model_config_dir / "config.json").unlink()  # the folder changed after the job was accepted
    assert_problem(pg_client.get(f"/v1/jobs/{job_id}/model"), 404, "no config.json")
    assert_problem(pg_client.get("/v1/jobs/nope/model"), 404, "does not exist")


# --- report -------------------------------------------------------------------------------------


def test_report_is_404_until_the_worker_writes_it(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    job_id = _job(pg_session, tiny_model_config_dir)
    assert_problem(pg_client.get(f"/v1/jobs/{job_id}/report"), 404, "no report yet")

    report = {
        "verification": {
            "primary": "kl",
            "dense": {"kl": 0.0, "ppl": 25.0, "tokens": 252, "primary": "kl"},
            "finalists": [
                {"trial_number": 7, "origin": "sampler", "proxy_score": 0.8, "primary": "kl", "tokens": 252, "kl": 0.1},
                # A figure that was not finite is stored as null.
                {"trial_number": 2, "origin": None, "proxy_score": None, "primary": "kl", "tokens": 252, "ppl": None},
            ],
            "ladder": [],
        },
        "export": {
            "name": "best",
            "kind": "standard",
            "param_count": 1234,
            "nonzero_params": 1200,
            "dense_params": 2000,
            "size_bytes": 4936,
            "dtype": "float16",
            "weights_bytes": 2468,
            "dense_weights_bytes": 4000,
            "speed": {
                "device": "cuda:0",
                "dtype": "float16",
                "workload": {
                    "prefill_batches": [1, 8],
                    "prefill_tokens": 512,
                    "decode_batches": [1, 16],
                    "prompt_tokens": 32,
                    "new_tokens": 128,
                    "warmup": 1,
                    "repeats": 5,
                },
                "prefill": [{"batch": 1, "tokens": 512, "dense_s": 0.01, "pruned_s": 0.005, "speedup": 2.0}],
                "decode": [
                    {
                        "batch": 16,
                        "prompt_tokens": 32,
                        "new_tokens": 128,
                        "dense_tokens_per_s": 1000.0,
                        "pruned_tokens_per_s": 1500.0,
                        "speedup": 1.5,
                    }
                ],
                "dense_peak_bytes": 9000,
                "pruned_peak_bytes": 5000,
                "peak_memory": "CUDA max allocated",
                "dense_size_bytes": 4000,
                "pruned_size_bytes": 2468,
            },
        },
        "pareto": [2, 7],
        "trust": None,
    }
    repository.set_report(pg_session, job_id, JobReport.model_validate(report))
    pg_session.commit()

    response = pg_client.get(f"/v1/jobs/{job_id}/report")
    assert response.status_code == 200, response.text
    assert response.json() == report


# --- artifacts ----------------------------------------------------------------------------------


@pytest.fixture
def exported(pg_session: Session, pg_settings: Settings, tiny_model_config_dir: Path) -> tuple[str, dict[str, bytes]]:
    """A job with a ready export 'best' and a pending 'trial-3'; returns (job id, best's files)."""
    job_id = _job(pg_session, tiny_model_config_dir)
    root = pg_settings.artifacts_dir / job_id
    files = _write_export(root / "best")
    (root / "trial-3.partial").mkdir(parents=True)
    (root / "trial-3.partial" / "config.json").write_bytes(b"{}")
    return job_id, files


def test_artifacts_list_is_empty_without_exports(
    pg_client: TestClient, pg_session: Session, tiny_model_config_dir: Path
) -> None:
    job_id = _job(pg_session, tiny_model_config_dir)
    assert pg_client.get(f"/v1/jobs/{job_id}/artifacts").json() == {"items": []}


def test_artifacts_list_ready_and_pending_exports(
    pg_client: TestClient, exported: tuple[str, dict[str, bytes]]
) -> None:
    job_id, files = exported
    response = pg_client.get(f"/v1/jobs/{job_id}/artifacts")

    assert response.status_code == 200, response.text
    best, pending = response.json()["items"]
    base = f"/v1/jobs/{job_id}/artifacts/best"
    assert best == {
        "name": "best",
        "status": "ready",
        "files": [{"path": path, "size": len(files[path]), "url": f"{base}/{path}"} for path in sorted(files)],
        "size": sum(len(content) for content in files.values()),
        "archive_url": f"{base}.tar",
        "provenance": PROVENANCE,
    }
    assert pending == {
        "name": "trial-3",
        "status": "pending",
        "files": [],
        "size": 2,
        "archive_url": None,
        "provenance": None,
    }


def test_file_download_returns_the_bytes(pg_client: TestClient, exported: tuple[str, dict[str, bytes]]) -> None:
    job_id, files = exported
    listed = pg_client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"][0]["files"]
    for item in listed:
        response = pg_client.get(item["url"])
        assert response.status_code == 200, response.text
        assert response.content == files[item["path"]]
        assert response.headers["content-length"] == str(len(files[item["path"]]))

    weights = pg_client.get(f"/v1/jobs/{job_id}/artifacts/best/model.safetensors")
    assert weights.headers["content-type"] == "application/octet-stream"
    assert weights.headers["content-disposition"].startswith("attachment")
    config = pg_client.get(f"/v1/jobs/{job_id}/artifacts/best/config.json")
    assert config.headers["content-type"] == "application/json"


def test_tar_download_extracts_to_the_same_files(
    pg_client: TestClient, exported: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    job_id, files = exported
    response = pg_client.get(f"/v1/jobs/{job_id}/artifacts/best.tar")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    assert response.headers["content-length"] == str(len(response.content))
    assert len(response.content) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        assert sorted(archive.getnames()) == sorted(["best", *(f"best/{path}" for path in files)])
        archive.extractall(tmp_path / "out", filter="data")
    extracted = {
        path.relative_to(tmp_path / "out" / "best").as_posix(): path.read_bytes()
        for path in (tmp_path / "out" / "best").rglob("*")
        if path.is_file()
    }
    assert extracted == files


def test_pending_and_unknown_exports_cannot_be_downloaded(
    pg_client: TestClient, exported: tuple[str, dict[str, bytes]]
) -> None:
    job_id, _files = exported
    base = f"/v1/jobs/{job_id}/artifacts"
    assert_problem(pg_client.get(f"{base}/trial-3.tar"), 409, "still being written")
    assert_problem(pg_client.get(f"{base}/trial-3/config.json"), 409, "still being written")
    assert_problem(pg_client.get(f"{base}/trial-3.partial/config.json"), 404)
    assert_problem(pg_client.get(f"{base}/trial-9.tar"), 404, "no export named 'trial-9'")
    assert_problem(pg_client.get(f"{base}/best/missing.bin"), 404, "no file")
    assert_problem(pg_client.get(f"{base}/best/tokenizer"), 404, "no file")  # a folder is not a file
    assert_problem(pg_client.get("/v1/jobs/nope/artifacts/best.tar"), 404, "does not exist")


@pytest.mark.parametrize(
    "path",
    [
        "best/..%2F..%2F..%2Fetc%2Fpasswd",
        "best/..%2Ftrial-3.partial%2Fconfig.json",
        "..%2F..%2Fetc/passwd",
        "best/%2Fetc%2Fpasswd",
        "best//etc/passwd",
        "best/secret",  # a symlink pointing outside the job's folder
        "escape/secret.txt",  # an export folder that is a symlink to elsewhere
        "escape.tar",
        "..%2F..%2Fetc.tar",
    ],
)
def test_paths_never_leave_the_job_folder(
    pg_client: TestClient, exported: tuple[str, dict[str, bytes]], pg_settings: Settings, tmp_path: Path, path: str
) -> None:
    job_id, _files = exported
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP-SECRET-CONTENT")
    root = pg_settings.artifacts_dir / job_id
    (root / "best" / "secret").symlink_to(outside / "secret.txt")
    (root / "escape").symlink_to(outside)

    response = pg_client.get(f"/v1/jobs/{job_id}/artifacts/{path}")

    assert_problem(response, 404)
    assert b"TOP-SECRET-CONTENT" not in response.content
    listed = pg_client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    assert [item["name"] for item in listed] == ["best", "trial-3"]
    assert "secret" not in {item["path"] for item in listed[0]["files"]}


# --- export requests --------------------------------------------------------------------------


def test_export_request_enqueues_the_task(
    pg_client: TestClient, pg_session: Session, redis_client: redis.Redis, tiny_model_config_dir: Path
) -> None:
    job_id = _job(pg_session, tiny_model_config_dir)
    _trial(pg_session, job_id, 7, value=0.5, param_ratio=0.6)

    response = pg_client.post(f"/v1/jobs/{job_id}/trials/7/export")

    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{job_id}/artifacts"
    assert response.json() | {"name": "trial-7", "status": "pending"} == response.json()
    assert _queued(redis_client) == [(EXPORT_TRIAL_TASK, [job_id, 7])]


def test_export_request_refusals(
    pg_client: TestClient, pg_session: Session, redis_client: redis.Redis, tiny_model_config_dir: Path
) -> None:
    job_id = _job(pg_session, tiny_model_config_dir)
    _trial(pg_session, job_id, 1, state="failed", error="out of memory")
    _trial(pg_session, job_id, 2, state="running")

    problem = assert_problem(pg_client.post(f"/v1/jobs/{job_id}/trials/1/export"), 409, "trial 1 is failed")
    assert problem["trial_state"] == "failed"
    assert_problem(pg_client.post(f"/v1/jobs/{job_id}/trials/2/export"), 409, "only complete trials")
    assert_problem(pg_client.post(f"/v1/jobs/{job_id}/trials/99/export"), 404, "has no trial 99")
    assert_problem(pg_client.post("/v1/jobs/nope/trials/1/export"), 404, "does not exist")
    assert_problem(pg_client.post(f"/v1/jobs/{job_id}/trials/-1/export"), 422)
    assert redis_client.llen("celery") == 0


def test_export_request_is_idempotent(
    pg_client: TestClient,
    pg_session: Session,
    pg_settings: Settings,
    redis_client: redis.Redis,
    tiny_model_config_dir: Path,
) -> None:
    job_id = _job(pg_session, tiny_model_config_dir)
    _trial(pg_session, job_id, 5, value=0.5, param_ratio=0.6)
    _trial(pg_session, job_id, 6, value=0.4, param_ratio=0.5)
    root = pg_settings.artifacts_dir / job_id
    files = _write_export(root / "trial-5")
    (root / "trial-6.partial").mkdir()

    ready = pg_client.post(f"/v1/jobs/{job_id}/trials/5/export")
    pending = pg_client.post(f"/v1/jobs/{job_id}/trials/6/export")

    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready" and ready.json()["provenance"] == PROVENANCE
    assert len(ready.json()["files"]) == len(files)
    assert ready.json()["archive_url"] == f"/v1/jobs/{job_id}/artifacts/trial-5.tar"
    assert pending.status_code == 202 and pending.json()["status"] == "pending"
    assert redis_client.llen("celery") == 0  # neither sends a second writer


def test_export_request_with_dead_broker_is_503(
    client_for: Callable[[Settings], TestClient],
    pg_settings: Settings,
    pg_session: Session,
    tiny_model_config_dir: Path,
) -> None:
    job_id = _job(pg_session, tiny_model_config_dir)
    _trial(pg_session, job_id, 0, value=0.5, param_ratio=0.6)
    # A real fault: nothing listens on port 1.
    client = client_for(pg_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))

    assert_problem(client.post(f"/v1/jobs/{job_id}/trials/0/export"), 503, "task queue is unreachable")


def test_openapi_documents_result_endpoints(pg_client: TestClient) -> None:
    paths = pg_client.get("/openapi.json").json()["paths"]
    expected = {
        ("/v1/jobs/{job_id}/pareto", "get"): {"200", "404"},
        ("/v1/jobs/{job_id}/report", "get"): {"200", "404"},
        ("/v1/jobs/{job_id}/artifacts", "get"): {"200", "404"},
        ("/v1/jobs/{job_id}/artifacts/{name}.tar", "get"): {"200", "404", "409"},
        ("/v1/jobs/{job_id}/artifacts/{name}/{path}", "get"): {"200", "404", "409"},
        ("/v1/jobs/{job_id}/trials/{number}/export", "post"): {"202", "200", "404", "409", "503"},
        ("/v1/jobs/{job_id}/artifacts/{name}/onnx", "post"): {"202", "200", "404", "409", "503"},
    }
    for (path, method), statuses in expected.items():
        responses = paths[path][method]["responses"]
        assert statuses <= set(responses), (path, set(responses))
        for status in statuses - {"200", "202"}:
            assert "application/problem+json" in responses[status]["content"], (path, status)
    tar = paths["/v1/jobs/{job_id}/artifacts/{name}.tar"]["get"]["responses"]["200"]["content"]
    assert "application/x-tar" in tar
