"""The server's limits and hostile input, on PostgreSQL + Redis: refused cleanly, nothing created.

Every refusal is problem+json naming what to change; none is a 5xx; no job row, no task message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete

from service import apikeys
from service.admission import inside_roots
from service.db import make_sessionmaker
from service.models import ApiKey
from service.settings import Settings
from tests.service.helpers import TEST_MAX_TRIALS, assert_problem, count_jobs, job_spec


@pytest.fixture
def new_key(clean_postgres: Engine) -> Iterator[Callable[[str], dict[str, str]]]:
    """``new_key("alice")``: a fresh key's Authorization header. Keys are removed after the test."""
    sessions = make_sessionmaker(clean_postgres)

    def create(owner: str) -> dict[str, str]:
        with sessions() as session:
            issued = apikeys.create_key(session, owner)
            session.commit()
        return {"Authorization": f"Bearer {issued.key}"}

    yield create
    with clean_postgres.begin() as connection:
        connection.execute(delete(ApiKey))


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    """A models root holding a valid config-only model, a secret outside it, and escaping symlinks."""
    from tests.conftest import TINY_LLAMA_CONFIG

    root = tmp_path / "models"
    model = root / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG))
    (outside / "weights.bin").write_text("secret")
    (root / "link-out").symlink_to(outside)  # a directory link leaving the root
    sneaky = root / "sneaky"
    sneaky.mkdir()
    (sneaky / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG))
    (sneaky / "model.safetensors").symlink_to(outside / "weights.bin")  # a file link leaving the root
    (root / "corpus.txt").write_text("calibration text " * 100)
    return root


@pytest.fixture
def limited(client_for: Callable[[Settings], TestClient], pg_settings: Settings, roots: Path) -> TestClient:
    return client_for(
        pg_settings.model_copy(
            update={
                "model_roots": (roots.resolve(),),
                "max_body_bytes": 4096,
                "max_calibration_samples": 64,
                "max_seq_len": 512,
                "max_active_jobs_per_key": 3,
                "max_submissions_per_minute": 5,
                "max_recovery_steps": 100,
            }
        )
    )


def _no_trace(clean_postgres: Engine, redis_client: redis.Redis) -> None:
    assert count_jobs(clean_postgres) == 0
    assert redis_client.llen("celery") == 0


# --- body size ----------------------------------------------------------------------------------


def test_a_declared_oversized_body_is_413_before_it_is_read(
    limited: TestClient, clean_postgres: Engine, redis_client: redis.Redis, roots: Path
) -> None:
    body = job_spec(roots / "tiny", calibration={"texts": ["x" * 5000]})
    problem = assert_problem(limited.post("/v1/jobs", json=body), 413, "at most 4096 bytes (max_body_bytes)")
    assert problem["type"] == "urn:prunesearch:problem:request-too-large"
    _no_trace(clean_postgres, redis_client)


def test_a_chunked_oversized_body_is_413(
    limited: TestClient, clean_postgres: Engine, redis_client: redis.Redis
) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts bytes as they arrive
        yield b'{"model": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'

    response = limited.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "max_body_bytes")
    _no_trace(clean_postgres, redis_client)


def test_a_body_at_the_limit_is_accepted(limited: TestClient, roots: Path) -> None:
    body = json.dumps(job_spec(roots / "tiny")).encode()
    padded = body[:-1] + b" " * (4096 - len(body)) + b"}"
    assert len(padded) == 4096
    response = limited.post("/v1/jobs", content=padded, headers={"Content-Type": "application/json"})
    assert response.status_code == 202, response.text


# --- spec limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "detail", "loc"),
    [
        ({"n_trials": TEST_MAX_TRIALS + 1}, f"n_trials {TEST_MAX_TRIALS + 1} is above", ["body", "n_trials"]),
        ({"calibration": {"n_samples": 65}}, "calibration.n_samples 65 is above this server's limit of 64", None),
        ({"calibration": {"heldout_samples": 100}}, "(max_calibration_samples)", None),
        ({"calibration": {"seq_len": 1024}}, "calibration.seq_len 1024 is above this server's limit of 512", None),
        (
            {"n_trials": TEST_MAX_TRIALS + 1, "calibration": {"seq_len": 1024}},
            "(max_trials), and 1 more",
            ["body", "calibration", "seq_len"],
        ),
    ],
)
def test_spec_limits_come_from_settings(
    limited: TestClient,
    clean_postgres: Engine,
    redis_client: redis.Redis,
    roots: Path,
    overrides: dict[str, Any],
    detail: str,
    loc: list[str] | None,
) -> None:
    problem = assert_problem(limited.post("/v1/jobs", json=job_spec(roots / "tiny", **overrides)), 422, detail)
    assert problem["type"] == "urn:prunesearch:problem:limit-exceeded"
    if loc is not None:
        assert loc in [error["loc"] for error in problem["errors"]]
    _no_trace(clean_postgres, redis_client)


@pytest.mark.parametrize(
    ("recovery", "detail", "loc"),
    [
        ({"steps": 101}, "recovery.steps 101 is above this server's limit of 100", ["body", "recovery", "steps"]),
        ({"learning_rate": -0.001}, "greater than 0", ["body", "recovery", "learning_rate"]),
        ({"learning_rate": 0}, "greater than 0", ["body", "recovery", "learning_rate"]),
        ({"lora_rank": 17, "steps": 10}, "at most 16, its head size", ["body", "recovery", "lora_rank"]),
        ({"finalists": 6, "steps": 10}, "verify_top_k is 5", ["body", "recovery"]),
    ],
)
def test_recovery_beyond_the_server_or_the_model_is_refused_naming_the_field(
    limited: TestClient,
    clean_postgres: Engine,
    redis_client: redis.Redis,
    roots: Path,
    recovery: dict[str, Any],
    detail: str,
    loc: list[str],
) -> None:
    problem = assert_problem(limited.post("/v1/jobs", json=job_spec(roots / "tiny", recovery=recovery)), 422, detail)
    assert loc in [error["loc"] for error in problem["errors"]], problem
    _no_trace(clean_postgres, redis_client)


# --- per-key quotas -----------------------------------------------------------------------------


def test_concurrent_jobs_per_key(
    limited: TestClient, new_key: Callable[[str], dict[str, str]], roots: Path, clean_postgres: Engine
) -> None:
    alice, bob = new_key("alice"), new_key("bob")
    ids = [limited.post("/v1/jobs", json=job_spec(roots / "tiny"), headers=alice).json()["id"] for _ in range(3)]
    problem = assert_problem(
        limited.post("/v1/jobs", json=job_spec(roots / "tiny"), headers=alice), 429, "max_active_jobs_per_key"
    )
    assert problem["type"] == "urn:prunesearch:problem:too-many-active-jobs" and problem["active_jobs"] == 3
    # Per key: bob is not affected; and a finished (cancelled) job frees a slot.
    assert limited.post("/v1/jobs", json=job_spec(roots / "tiny"), headers=bob).status_code == 202
    assert limited.post(f"/v1/jobs/{ids[0]}/cancel", headers=alice).status_code == 202
    assert limited.post("/v1/jobs", json=job_spec(roots / "tiny"), headers=alice).status_code == 202
    assert count_jobs(clean_postgres) == 5


def test_submission_rate_per_key(
    limited: TestClient, new_key: Callable[[str], dict[str, str]], roots: Path, clean_postgres: Engine
) -> None:
    alice = new_key("alice")
    replayable = alice | {"Idempotency-Key": "k"}
    first = limited.post("/v1/jobs", json=job_spec(roots / "tiny"), headers=replayable).json()["id"]
    for index in range(5):
        if index:
            first_or_next = limited.post("/v1/jobs", json=job_spec(roots / "tiny"), headers=alice).json()["id"]
        else:
            first_or_next = first
        limited.post(f"/v1/jobs/{first_or_next}/cancel", headers=alice)  # stay under the concurrency limit
    response = limited.post("/v1/jobs", json=job_spec(roots / "tiny"), headers=alice)
    problem = assert_problem(response, 429, "max_submissions_per_minute")
    assert problem["type"] == "urn:prunesearch:problem:submission-rate-exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    # A replay of an accepted submission creates nothing, so it is answered, not rate limited.
    replay = limited.post("/v1/jobs", json=job_spec(roots / "tiny"), headers=replayable)
    assert replay.status_code == 200 and replay.json()["id"] == first
    assert count_jobs(clean_postgres) == 5


def test_anonymous_local_use_has_no_quota(
    client_for: Callable[[Settings], TestClient], pg_settings: Settings, tiny_model_config_dir: Path
) -> None:
    client = client_for(pg_settings.model_copy(update={"max_active_jobs_per_key": 1, "max_submissions_per_minute": 1}))
    for _ in range(3):
        assert client.post("/v1/jobs", json=job_spec(tiny_model_config_dir)).status_code == 202


# --- local paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "{outside}",  # an existing model outside the root
        "{outside}/does-not-exist",  # a missing one: the same answer, so nothing is probed
        "{root}/../outside",  # climbing out
        "{root}/tiny/../tiny",  # climbing, even back in
        "{root}/link-out",  # a symlinked folder leading out
        "{root}/sneaky",  # inside, but a file in it links out
        "/etc",
        "~",
    ],
)
def test_keyed_owners_name_only_paths_inside_model_roots(
    limited: TestClient,
    new_key: Callable[[str], dict[str, str]],
    roots: Path,
    clean_postgres: Engine,
    redis_client: redis.Redis,
    model: str,
) -> None:
    path = model.format(root=roots, outside=roots.parent / "outside")
    response = limited.post("/v1/jobs", json=job_spec(Path(path)), headers=new_key("alice"))
    problem = assert_problem(response, 422, "is not inside the folders this server allows")
    assert problem["type"] == "urn:prunesearch:problem:path-not-allowed"
    assert "does not exist" not in problem["detail"] and "config.json" not in problem["detail"]
    _no_trace(clean_postgres, redis_client)


def test_calibration_sources_are_held_to_the_roots_too(
    limited: TestClient, new_key: Callable[[str], dict[str, str]], roots: Path
) -> None:
    alice = new_key("alice")
    inside = job_spec(roots / "tiny", calibration={"source": str(roots / "corpus.txt")})
    assert limited.post("/v1/jobs", json=inside, headers=alice).status_code == 202
    outside = job_spec(roots / "tiny", calibration={"source": "/etc/passwd"})
    assert_problem(limited.post("/v1/jobs", json=outside, headers=alice), 422, "calibration.source '/etc/passwd'")


def test_without_roots_keyed_owners_may_name_no_local_path(
    pg_client: TestClient, new_key: Callable[[str], dict[str, str]], tiny_model_config_dir: Path
) -> None:
    response = pg_client.post("/v1/jobs", json=job_spec(tiny_model_config_dir), headers=new_key("alice"))
    assert_problem(response, 422, "PRUNESEARCH_MODEL_ROOTS")


def test_inside_roots(roots: Path, tmp_path: Path) -> None:
    resolved = (roots.resolve(),)
    assert inside_roots(str(roots / "tiny"), resolved) == (roots / "tiny").resolve()
    assert inside_roots(str(roots / "corpus.txt"), resolved) == (roots / "corpus.txt").resolve()
    alias = tmp_path / "alias"
    alias.symlink_to(roots)  # reaching the root itself through a link is fine
    assert inside_roots(str(alias / "tiny"), resolved) == (roots / "tiny").resolve()
    for escape in ("link-out", "sneaky", "tiny/../tiny", "../outside/config.json"):
        assert inside_roots(str(roots / escape), resolved) is None, escape
    loop = roots / "loop"
    loop.symlink_to(loop)
    assert inside_roots(str(loop), resolved) is None


# --- hostile input ------------------------------------------------------------------------------

_Build = Callable[[Path], "str | bytes | dict[str, Any] | list[Any]"]
HOSTILE: list[tuple[str, _Build, int]] = [
    ("empty body", lambda m: b"", 422),
    ("JSON null", lambda m: "null", 422),
    ("top-level array", lambda m: [job_spec(m)], 422),
    ("truncated", lambda m: '{"model": "', 400),
    ("not UTF-8", lambda m: b'{"model": "\xff\xfe"}', 400),
    ("deeply nested array", lambda m: "[" * 100_000 + "]" * 100_000, 400),
    ("deeply nested object", lambda m: '{"a":' * 50_000 + "1" + "}" * 50_000, 400),
    ("nested in a field", lambda m: job_spec(m) | {"target": json.loads("[" * 200 + "]" * 200)}, 422),
    ("NaN", lambda m: json.dumps(job_spec(m, target={"param_ratio": float("nan")})), 422),
    ("Infinity", lambda m: json.dumps(job_spec(m, target={"param_ratio": float("inf")})), 422),
    ("-Infinity", lambda m: json.dumps(job_spec(m, n_trials=float("-inf"))), 422),
    ("1e400", lambda m: json.dumps(job_spec(m)).replace('"n_trials": 20', '"n_trials": 1e400'), 422),
    ("huge integer", lambda m: job_spec(m, n_trials=10**400), 422),
    ("huge seed", lambda m: job_spec(m, seed=2**64), 422),
    ("negative trials", lambda m: job_spec(m, n_trials=-5), 422),
    ("negative seq_len", lambda m: job_spec(m, calibration={"seq_len": -1}), 422),
    ("float trials", lambda m: job_spec(m, n_trials=1.5), 422),
    ("object as ratio", lambda m: job_spec(m, target={"param_ratio": {"$gt": 0}}), 422),
    ("string as number", lambda m: job_spec(m, n_trials="20; DROP TABLE job"), 422),
    ("NUL in model", lambda m: job_spec(Path(str(m) + "\x00.x")), 422),
    ("lone surrogate", lambda m: '{"model": "\\ud800", "target": {"param_ratio": 0.5}}', 422),
    ("NUL-only model", lambda m: job_spec(Path("\x00")), 422),
    ("unicode model path", lambda m: job_spec(Path("/models/模型-🦙-\u202e-ñ̃")), 422),
    ("RTL and zero-width hub id", lambda m: job_spec(Path("\u200borg/\u202emodel")), 422),
    ("unicode-heavy texts", lambda m: job_spec(m, calibration={"texts": ["🦙" * 300, "\u0301" * 300]}), 202),
    ("4096-char model", lambda m: job_spec(Path("/" + "a" * 4095)), 422),
    ("4097-char model", lambda m: job_spec(Path("/" + "a" * 4096)), 422),
    ("trust_remote_code", lambda m: job_spec(m, trust_remote_code=True), 422),
    ("unknown nested field", lambda m: job_spec(m, calibration={"n_samples": 4, "exec": "rm -rf /"}), 422),
    ("duplicate keys", lambda m: '{"model": "a", "model": "b", "target": {"param_ratio": 2}}', 422),
]


@pytest.mark.parametrize(("build", "status"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_are_refused_cleanly(
    pg_client: TestClient,
    clean_postgres: Engine,
    redis_client: redis.Redis,
    tiny_model_config_dir: Path,
    build: _Build,
    status: int,
) -> None:
    content = build(tiny_model_config_dir)
    if isinstance(content, dict | list):
        response = pg_client.post("/v1/jobs", json=content)
    else:
        raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
        response = pg_client.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
    if status == 202:
        assert response.status_code == 202, response.text
        return
    assert_problem(response, status)
    _no_trace(clean_postgres, redis_client)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/%00",
        "/v1/jobs/" + "f" * 32 + "%00",
        "/v1/jobs/%F0%9F%A6%99",
        "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
        "/v1/jobs/" + "a" * 5000,
        "/v1/jobs/" + "0" * 32 + "/trials?cursor=%00",
        "/v1/jobs?cursor=" + "A" * 512,
        "/v1/jobs?limit=99999999999999999999999",
        "/v1/jobs?limit=-1",
        "/v1/jobs?status=%00",
    ],
)
def test_hostile_paths_and_queries_are_4xx(pg_client: TestClient, path: str) -> None:
    response = pg_client.get(path)
    assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")


def test_a_non_json_content_type_is_refused(pg_client: TestClient, tiny_model_config_dir: Path) -> None:
    body = json.dumps(job_spec(tiny_model_config_dir))
    response = pg_client.post("/v1/jobs", content=body, headers={"Content-Type": "text/plain"})
    assert_problem(response, 422)


def test_idempotency_key_header_limits(pg_client: TestClient, tiny_model_config_dir: Path) -> None:
    body = job_spec(tiny_model_config_dir)
    assert_problem(pg_client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k" * 256}), 422)
    raw = {"Idempotency-Key": "ключ-🦙".encode()}  # not ASCII: arrives as Latin-1, stored as given
    first = pg_client.post("/v1/jobs", json=body, headers=raw)
    assert first.status_code == 202, first.text
    assert pg_client.post("/v1/jobs", json=body, headers=raw).json()["id"] == first.json()["id"]
