"""API keys on a real migrated PostgreSQL database: who may call, and whose jobs they see."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, select, text
from sqlalchemy.orm import Session

from service import apikeys, repository
from service.api.app import create_app
from service.api.auth import check_bind, is_loopback
from service.db import AsyncReads, make_engine, make_sessionmaker
from service.models import ApiKey
from service.settings import Settings
from tests.e2e.processes import PRUNESEARCH, base_env
from tests.service.helpers import assert_problem, count_jobs, job_spec


@pytest.fixture
def keys(clean_postgres: Engine) -> Iterator[Callable[[str], str]]:
    """Creates API keys (``keys("alice")`` returns the secret); removes them all after the test."""
    sessions = make_sessionmaker(clean_postgres)

    def create(owner: str) -> str:
        with sessions() as session:
            issued = apikeys.create_key(session, owner)
            session.commit()
        return issued.key

    yield create
    with clean_postgres.begin() as connection:
        connection.execute(delete(ApiKey))


@pytest.fixture
def keyed_client(
    client_for: Callable[[Settings], TestClient], pg_settings: Settings, tiny_model_config_dir: Path
) -> TestClient:
    """Keyed owners may only name local paths under model_roots: allow the test model's folder."""
    return client_for(pg_settings.model_copy(update={"model_roots": (tiny_model_config_dir.parent.resolve(),)}))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_without_keys_loopback_callers_are_anonymous(pg_client: TestClient, tiny_model_config_dir: Path) -> None:
    response = pg_client.post("/v1/jobs", json=job_spec(tiny_model_config_dir))
    assert response.status_code == 202, response.text
    assert pg_client.get(response.headers["location"]).status_code == 200


def test_once_a_key_exists_every_v1_route_needs_one(pg_client: TestClient, keys: Callable[[str], str]) -> None:
    keys("alice")
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", f"/v1/jobs/{'0' * 32}/pareto")]:
        problem = assert_problem(pg_client.request(method, path, json={}), 401, "requires an API key")
        assert problem["type"] == "urn:prunesearch:problem:unauthorized"
    response = pg_client.get("/v1/jobs")
    assert response.headers["www-authenticate"].startswith("Bearer")
    # Probes and the API description stay public.
    assert pg_client.get("/healthz").status_code == 200
    assert pg_client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("key", ["psk_0123456789ab_" + "x" * 43, "not-a-key", "psk_", ""])
def test_unknown_or_malformed_keys_are_401(pg_client: TestClient, keys: Callable[[str], str], key: str) -> None:
    keys("alice")
    response = pg_client.get("/v1/jobs", headers=_bearer(key))
    assert_problem(response, 401)
    assert "Traceback" not in response.text


def test_a_wrong_secret_for_a_real_key_id_is_401(pg_client: TestClient, keys: Callable[[str], str]) -> None:
    real = keys("alice")
    forged = real[: real.rindex("_") + 1] + "A" * 43
    assert_problem(pg_client.get("/v1/jobs", headers=_bearer(forged)), 401, "unknown, malformed or revoked")
    assert 'error="invalid_token"' in pg_client.get("/v1/jobs", headers=_bearer(forged)).headers["www-authenticate"]


def test_jobs_are_visible_and_cancellable_only_by_their_owner(
    keyed_client: TestClient, keys: Callable[[str], str], tiny_model_config_dir: Path
) -> None:
    pg_client = keyed_client
    alice, alice_again, bob = keys("alice"), keys("alice"), keys("bob")
    created = pg_client.post("/v1/jobs", json=job_spec(tiny_model_config_dir), headers=_bearer(alice))
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]

    for path in ("", "/trials", "/pareto", "/report", "/artifacts", "/artifacts/best/config.json"):
        response = pg_client.get(f"/v1/jobs/{job_id}{path}", headers=_bearer(bob))
        # 404, not 403: bob learns nothing, not even that the id exists.
        assert_problem(response, 404, f"job {job_id!r} does not exist")
    assert_problem(pg_client.post(f"/v1/jobs/{job_id}/cancel", headers=_bearer(bob)), 404)
    assert_problem(pg_client.post(f"/v1/jobs/{job_id}/trials/0/export", headers=_bearer(bob)), 404)
    assert pg_client.get("/v1/jobs", headers=_bearer(bob)).json()["items"] == []

    # Another key of the same owner sees it (key rotation keeps the jobs).
    assert pg_client.get(f"/v1/jobs/{job_id}", headers=_bearer(alice_again)).json()["id"] == job_id
    assert [job["id"] for job in pg_client.get("/v1/jobs", headers=_bearer(alice)).json()["items"]] == [job_id]
    cancelled = pg_client.post(f"/v1/jobs/{job_id}/cancel", headers=_bearer(alice))
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert_problem(pg_client.post(f"/v1/jobs/{job_id}/resume", headers=_bearer(bob)), 404)
    resumed = pg_client.post(f"/v1/jobs/{job_id}/resume", headers=_bearer(alice))
    assert resumed.status_code == 202 and resumed.json()["status"] == "queued"


def test_anonymous_jobs_are_not_visible_to_keys(
    pg_client: TestClient, pg_session: Session, keys: Callable[[str], str], tiny_model_config_dir: Path
) -> None:
    job = repository.create_job(pg_session, spec={}, model="m", trials_total=1)
    pg_session.commit()
    alice = keys("alice")
    assert_problem(pg_client.get(f"/v1/jobs/{job.id}", headers=_bearer(alice)), 404)


def test_revoked_keys_stop_working_at_once(
    pg_client: TestClient, keys: Callable[[str], str], pg_session: Session
) -> None:
    alice, _bob = keys("alice"), keys("bob")
    assert pg_client.get("/v1/jobs", headers=_bearer(alice)).status_code == 200
    key_id = alice.split("_")[1]
    apikeys.revoke_key(pg_session, key_id)
    pg_session.commit()
    assert_problem(pg_client.get("/v1/jobs", headers=_bearer(alice)), 401, "revoked")


def test_a_revoked_key_is_refused_by_the_next_poll(
    pg_client: TestClient, keys: Callable[[str], str], pg_session: Session
) -> None:
    """On PostgreSQL the guard reads the key in the event loop (``AsyncReads``): still every request."""
    assert pg_client.app.state.async_reads is not None  # type: ignore[attr-defined]
    alice = keys("alice")
    job = repository.create_job(pg_session, spec={}, model="m", trials_total=1, owner="alice")
    pg_session.commit()
    assert pg_client.get(f"/v1/jobs/{job.id}", headers=_bearer(alice)).status_code == 200
    apikeys.revoke_key(pg_session, alice.split("_")[1])
    pg_session.commit()
    assert_problem(pg_client.get(f"/v1/jobs/{job.id}", headers=_bearer(alice)), 401, "revoked")


def test_async_key_reads_agree_with_the_session_and_survive_stale_connections(
    clean_postgres: Engine, keys: Callable[[str], str], pg_session: Session
) -> None:
    """The event-loop read gives what the session's gives (UTC stamps, owners, refusals); connections
    killed while idle (every one, as a server restart does) are replaced on the next read, and a new
    event loop gets connections of its own."""
    alice = keys("alice")
    job = repository.create_job(pg_session, spec={}, model="m", trials_total=1, owner="alice")
    pg_session.commit()
    expected = apikeys.verify_key_and_stamp(pg_session, alice, job.id)
    assert expected[0] is not None and expected[1] is not None
    pg_session.close()
    reads = AsyncReads.for_engine(clean_postgres, size=2)
    assert reads is not None

    async def read(key: str, job_id: str | None) -> tuple[apikeys.VerifiedKey | None, repository.JobStamp | None]:
        return await apikeys.verify_key_and_stamp_async(reads, key, job_id)

    async def read_kill_read() -> None:
        assert await asyncio.gather(read(alice, job.id), read(alice, job.id)) == [expected, expected]  # 2 idle
        assert await read(alice, "0" * 32) == (expected[0], None)  # no such job
        assert await read(alice[:-1] + "x", job.id) == (None, None)  # wrong secret
        with clean_postgres.connect() as connection:  # the idle read connection dies (server restart)
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = ''"
                )
            )
        assert await read(alice, job.id) == expected

    run_in_new_loop(read_kill_read())
    run_in_new_loop(read_kill_read())  # another loop: the first loop's connections are not reused
    run_in_new_loop(reads.close())


def run_in_new_loop(coroutine: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` on a thread of its own: the browser tests' session-wide Playwright keeps an event
    loop running on the main thread, where ``asyncio.run`` refuses to start another."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result()


def test_an_unreachable_database_is_a_503_on_the_event_loop_read(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none")
    with TestClient(create_app(settings)) as client:
        answer = client.get("/v1/jobs/" + "0" * 32, headers=_bearer("psk_000000000000_" + "a" * 43))
    assert_problem(answer, 503, "database is unavailable")
    assert answer.headers["Retry-After"]


def test_sqlite_keeps_the_thread_pool_read(sqlite_settings: Settings) -> None:
    assert AsyncReads.for_engine(make_engine(sqlite_settings.database_url)) is None


def test_keys_are_stored_as_digests_only(
    keys: Callable[[str], str], pg_session: Session, clean_postgres: Engine
) -> None:
    key = keys("alice")
    row = pg_session.scalars(select(ApiKey)).one()
    assert row.owner == "alice" and key.startswith(f"psk_{row.id}_")
    assert len(row.secret_hash) == 64 and key not in row.secret_hash
    with clean_postgres.connect() as connection:
        dump = " ".join(str(value) for value in connection.execute(text("SELECT * FROM api_key")).one())
    assert key.split("_", 2)[2] not in dump


def test_idempotency_keys_are_per_owner(
    keyed_client: TestClient, keys: Callable[[str], str], tiny_model_config_dir: Path, clean_postgres: Engine
) -> None:
    pg_client = keyed_client
    alice, bob = keys("alice"), keys("bob")
    body = job_spec(tiny_model_config_dir)
    header = {"Idempotency-Key": "nightly"}
    first = pg_client.post("/v1/jobs", json=body, headers=_bearer(alice) | header)
    # Bob's identical request must not replay (and so reveal) alice's job, nor be refused because of it.
    other = pg_client.post("/v1/jobs", json=body | {"n_trials": 21}, headers=_bearer(bob) | header)
    same = pg_client.post("/v1/jobs", json=body, headers=_bearer(bob) | header)
    assert first.status_code == 202 and other.status_code == 202, other.text
    assert same.status_code == 422  # bob's own key, reused with another body
    again = pg_client.post("/v1/jobs", json=body, headers=_bearer(alice) | header)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert count_jobs(clean_postgres) == 2


def test_anonymous_requests_arriving_from_the_network_are_refused(
    pg_settings: Settings, tiny_model_config_dir: Path
) -> None:
    # The server side of the socket is a LAN address: a server bound to 0.0.0.0 with `--host`.
    with TestClient(create_app(pg_settings), base_url="http://192.0.2.10") as client:
        assert_problem(client.get("/v1/jobs"), 401, "anonymous requests on loopback only")
    allowed = pg_settings.model_copy(update={"allow_anonymous": True})
    with TestClient(create_app(allowed), base_url="http://192.0.2.10") as client:
        assert client.get("/v1/jobs").status_code == 200


def test_binding_beyond_loopback_without_keys_refuses_to_start(
    pg_settings: Settings, keys: Callable[[str], str]
) -> None:
    exposed = pg_settings.model_copy(update={"host": "0.0.0.0"})
    with (
        pytest.raises(RuntimeError, match=r"refusing to start on 0\.0\.0\.0 without API keys"),
        TestClient(create_app(exposed)),
    ):
        pass
    with TestClient(create_app(exposed.model_copy(update={"allow_anonymous": True}))) as client:
        assert client.get("/healthz").status_code == 200
    keys("alice")
    with TestClient(create_app(exposed)) as client:
        assert client.get("/v1/jobs").status_code == 401


def test_bind_check_fails_closed_when_the_database_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, host="0.0.0.0", database_url="postgresql://nobody@127.0.0.1:1/none")
    app = create_app(settings)
    with pytest.raises(RuntimeError, match="cannot check for API keys"):
        check_bind(settings, app.state.sessionmaker)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_every_v1_route_is_guarded(pg_client: TestClient, pg_session: Session, keys: Callable[[str], str]) -> None:
    """Every /v1 operation in the published schema, present and future: 401 without a key, and
    404 for someone else's job (``service.api.auth.API_GUARDS`` on the router, not code in each route)."""
    bob = keys("bob")
    alice_job = repository.create_job(pg_session, spec={}, model="m", trials_total=1, owner="alice")
    pg_session.commit()
    schema = pg_client.get("/openapi.json").json()
    operations = [
        (method.upper(), path) for path, item in schema["paths"].items() if path.startswith("/v1/") for method in item
    ]
    assert len(operations) >= 8
    values = {"job_id": alice_job.id, "number": "0", "name": "best", "path": "config.json"}
    for method, template in operations:
        path = template.format(**values)
        assert schema["paths"][template][method.lower()]["security"] == [{"ApiKey": []}], template
        assert_problem(pg_client.request(method, path), 401)
        if "{job_id}" in template:
            assert_problem(pg_client.request(method, path, headers=_bearer(bob)), 404, "does not exist")
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


def test_owner_names_are_checked(pg_session: Session) -> None:
    for bad in ["", "a b", "-x", "x" * 65, "alice\n", "ä"]:
        with pytest.raises(Exception, match="owner"):
            apikeys.create_key(pg_session, bad)
    assert apikeys.create_key(pg_session, "team.ml-1@example").owner == "team.ml-1@example"


def test_keys_command_creates_lists_and_revokes(
    pg_client: TestClient, migrated_postgres_url: str, keys: Callable[[str], str], tmp_path: Path
) -> None:
    env = base_env(tmp_path, database_url=migrated_postgres_url)

    def keys_command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PRUNESEARCH, "keys", *args], env=env, capture_output=True, text=True, timeout=120)

    created = keys_command("create", "carol")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()  # the key alone on stdout: KEY=$(prunesearch keys create carol)
    key_id = key.split("_")[1]
    assert "cannot be shown again" in created.stderr and key not in created.stderr
    assert pg_client.get("/v1/jobs", headers=_bearer(key)).status_code == 200

    listed = [json.loads(line) for line in keys_command("list", "--json").stdout.splitlines()]
    assert [(entry["id"], entry["owner"], entry["revoked_at"]) for entry in listed] == [(key_id, "carol", None)]

    revoked = keys_command("revoke", key_id)
    assert revoked.returncode == 0 and f"revoked {key_id} (carol)" in revoked.stdout
    assert_problem(pg_client.get("/v1/jobs", headers=_bearer(key)), 401)
    assert json.loads(keys_command("list", "--all", "--json").stdout)["revoked_at"] is not None

    unknown = keys_command("revoke", "000000000000")
    assert unknown.returncode == 1 and "no API key with id" in unknown.stderr
    bad_owner = keys_command("create", "not an owner")
    assert bad_owner.returncode == 2 and "owner" in bad_owner.stderr
