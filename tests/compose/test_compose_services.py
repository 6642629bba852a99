"""The exact commands of docker-compose.yml's migrate, api and worker services, run as local
processes against the local PostgreSQL and Redis, complete a job; the dashboard profile's
command then opens the job's Optuna study.

Compose resolves the file (``docker-compose config``); each service's ``command`` runs unchanged
with the service's ``environment``. Only what names the compose network or the container's
folders is pointed at this machine: the database and broker URLs, /data, /models, the ports and
the worker's device. The migrate and api processes run as in the slim API image: only
docker/requirements-api.txt's packages can be imported there (``api_image/sitecustomize.py``),
so torch and the other worker packages are absent, as they are in the image.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.broker import JOB_QUEUE, NOTIFY_QUEUE
from tests.compose.api_image.api_image_rules import closure, foreign_modules, read_requirements
from tests.compose.compose import API_REQUIREMENTS, container_command, resolved, write_env
from tests.e2e import flow
from tests.e2e.processes import Process, base_env, free_port, wait_ready, wait_until

pytestmark = pytest.mark.e2e

API_IMAGE_SHIM = Path(__file__).with_name("api_image")
VENV_BIN = str(Path(sys.executable).parent)


def local_env(service: dict[str, Any], overrides: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    environment = {key: str(value) for key, value in (service.get("environment") or {}).items()}
    # The names below are the only ones that refer to the compose network or the containers' folders.
    assert environment["PRUNESEARCH_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in environment["PRUNESEARCH_DATABASE_URL"]
    assert "@redis:6379/" in environment["PRUNESEARCH_BROKER_URL"]
    assert environment["PRUNESEARCH_DATA_DIR"] == "/data"
    env = base | environment | overrides
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")  # `prunesearch` is the venv's console script
    return env


def as_api_image(env: dict[str, str], import_log: Path) -> dict[str, str]:
    return env | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(API_IMAGE_SHIM), env.get("PYTHONPATH")])),
        "PRUNESEARCH_TEST_API_REQUIREMENTS": str(API_REQUIREMENTS),
        "PRUNESEARCH_TEST_IMPORT_LOG": str(import_log),
    }


def run_once(command: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{command} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def create_key_if_supported(env: dict[str, str]) -> str | None:
    """An API key, when this build has `prunesearch keys` (the API refuses 0.0.0.0 without one)."""
    probe = subprocess.run(["prunesearch", "keys", "--help"], env=env, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return None
    return run_once(["prunesearch", "keys", "create", "compose-test"], env).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def compose_stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_database_factory: Callable[[], str],
    redis_url: str,
    tiny_llama_dir: Path,
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("compose")
    env_file = write_env(tmp / ".env", POSTGRES_PASSWORD=secrets.token_hex(12), REDIS_PASSWORD=secrets.token_hex(12))
    services = resolved(env_file, profiles=("dashboard",))["services"]
    database_url = postgres_database_factory().replace("postgresql://", "postgresql+psycopg://", 1)
    port = free_port()
    data_dir = tmp / "data"
    overrides = {
        "PRUNESEARCH_DATABASE_URL": database_url,
        "PRUNESEARCH_OPTUNA_STORAGE_URL": database_url,
        "PRUNESEARCH_BROKER_URL": redis_url,
        "PRUNESEARCH_DATA_DIR": str(data_dir),
        "PRUNESEARCH_MODEL_ROOTS": str(tiny_llama_dir.parent),
        "HF_HOME": str(data_dir / "huggingface"),
    }
    base = base_env(data_dir)
    logs = tmp / "logs"
    logs.mkdir()
    import_logs = {"migrate": logs / "migrate.imports", "api": logs / "api.imports"}

    migrate_env = as_api_image(local_env(services["migrate"], overrides, base), import_logs["migrate"])
    run_once(container_command(services["migrate"]), migrate_env)
    # README: `docker compose run --rm api prunesearch keys create alice`, in the API image too.
    keys_log = logs / "keys.imports"
    key = create_key_if_supported(as_api_image(local_env(services["api"], overrides, base), keys_log))
    if key is not None:
        import_logs["keys"] = keys_log

    api_env = as_api_image(
        local_env(services["api"], overrides | {"PRUNESEARCH_PORT": str(port)}, base), import_logs["api"]
    )
    worker_env = local_env(services["worker"], overrides | {"PRUNESEARCH_DEVICE": "cpu"}, base)
    processes = [
        Process("api", container_command(services["api"]), api_env, logs),
        Process("worker", container_command(services["worker"]), worker_env, logs),
        Process("notify", container_command(services["notify"]), local_env(services["notify"], overrides, base), logs),
    ]
    by_name = {process.name: process for process in processes}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers)
    try:
        wait_ready(client, processes, timeout=180)
        yield {
            "client": client,
            "services": services,
            "overrides": overrides,
            "base": base,
            "logs": logs,
            "api_env": api_env,
            "import_logs": import_logs,
            "processes": by_name,
            "broker_url": redis_url,
        }
    except BaseException:
        for process in processes:
            print(process.tail())
        raise
    finally:
        client.close()
        for process in processes:
            process.stop()
    for process in processes:
        print(process.tail(15))


def test_the_compose_services_complete_a_job(compose_stack: dict[str, Any], tiny_llama_dir: Path) -> None:
    client = compose_stack["client"]
    assert compose_stack["api_env"]["PRUNESEARCH_HOST"] == "0.0.0.0"
    assert client.get("/").status_code == 200  # the web page is served by the api service
    job_id = flow.submit(client, flow.job_body(tiny_llama_dir))
    flow.check_completed_job(client, job_id)
    compose_stack["job_id"] = job_id


def test_the_gpu_worker_takes_jobs_and_the_notify_worker_webhooks_only(compose_stack: dict[str, Any]) -> None:
    """Asked over the broker (Celery's active_queues), each worker names the queues it consumes."""
    from celery import Celery

    # `prunesearch worker` names its Celery node prunesearch-<its pid>@<host>.
    expected = {f"prunesearch-{compose_stack['processes'][name].popen.pid}": queues for name, queues in
                (("worker", [JOB_QUEUE]), ("notify", [NOTIFY_QUEUE]))}  # fmt: skip
    app = Celery("compose-test", broker=compose_stack["broker_url"], set_as_current=False)

    def consumed() -> dict[str, list[str]] | None:
        replies = app.control.inspect(timeout=2).active_queues() or {}
        queues = {node.partition("@")[0]: sorted(queue["name"] for queue in found) for node, found in replies.items()}
        return queues if set(expected) <= set(queues) else None

    try:
        queues = wait_until(consumed, timeout=90, what="both workers to answer")
    finally:
        app.close()
    assert {node: queues[node] for node in expected} == expected


def test_the_dashboard_profile_opens_the_jobs_optuna_study(compose_stack: dict[str, Any]) -> None:
    service = compose_stack["services"]["dashboard"]
    command = container_command(service)
    port = free_port()
    assert "--port 8080" in command[-1]
    command[-1] = command[-1].replace("--port 8080", f"--port {port}")
    env = local_env(service, compose_stack["overrides"], compose_stack["base"])
    dashboard = Process("dashboard", command, env, compose_stack["logs"])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            def studies() -> list[str] | None:
                assert dashboard.popen.poll() is None, dashboard.tail()
                try:
                    response = client.get("/api/studies")
                except httpx.TransportError:
                    return None
                return [study["study_name"] for study in response.json()["study_summaries"]]

            names = wait_until(studies, timeout=60, what="optuna-dashboard to answer")
        assert f"job-{compose_stack['job_id']}" in names
    finally:
        dashboard.stop()


def test_the_api_and_migrate_commands_ran_as_in_the_api_image(compose_stack: dict[str, Any]) -> None:
    """They served the job above with only requirements-api.txt's packages importable; the logs say what they used."""
    time.sleep(1.5)  # the import logs are rewritten every second
    allowed = closure(read_requirements(API_REQUIREMENTS)) | {"prunesearch"}
    foreign = foreign_modules(allowed)
    for name, log in compose_stack["import_logs"].items():
        assert log.exists(), f"{name} wrote no import log"
        modules = set(log.read_text().split())
        assert {"sqlalchemy", "pydantic"} <= modules, name
        assert modules & foreign == set(), f"{name} imported modules the API image does not have"
        assert not modules & {"torch", "transformers", "optuna", "numpy"}, name
    assert {"fastapi", "uvicorn", "celery", "psycopg"} <= set(compose_stack["import_logs"]["api"].read_text().split())
