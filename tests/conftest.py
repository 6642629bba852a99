"""Shared fixtures: real PostgreSQL and Redis (CI guarantees both), SQLite files, tiny model configs.

Services are never mocked: an unreachable server fails the session with a message saying which
one and how to point the tests elsewhere. Tests stop every process they start: the session fails
if one is still running at its end (``pytest_sessionfinish``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests import proctree

if TYPE_CHECKING:
    from search.spec import JobSpec

# Chromium's helpers and Playwright's driver may take a moment to exit after the browser closes.
PROCESS_EXIT_GRACE_S = 10.0

POSTGRES_ADMIN_URL = os.environ.get("PRUNESEARCH_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER_URL = os.environ.get("PRUNESEARCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_REDIS_LOCK_PREFIX = "prunesearch-test:db-lock:"
_REDIS_LOCK_TTL_S = 2 * 3600  # outlives any test session; frees the db if a session crashed

TINY_LLAMA_CONFIG: dict[str, object] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
}

# The speed report's workload in tests (WorkerSettings.speed, from PRUNESEARCH_SPEED_*): one tiny prefill and decode,
# timed once, so the many exports of the suite stay cheap on two cores. The shipped default (batch 1
# and 8 × 512 prefill, batch 1 and 16 × 128 decoded tokens, 5 repeats) runs once, in tests/search/test_speed.py.
SMALL_SPEED_WORKLOAD: dict[str, str] = {
    "PRUNESEARCH_SPEED_PREFILL_BATCHES": "[1]",
    "PRUNESEARCH_SPEED_PREFILL_TOKENS": "16",
    "PRUNESEARCH_SPEED_DECODE_BATCHES": "[1]",
    "PRUNESEARCH_SPEED_PROMPT_TOKENS": "4",
    "PRUNESEARCH_SPEED_NEW_TOKENS": "4",
    "PRUNESEARCH_SPEED_WARMUP": "0",
    "PRUNESEARCH_SPEED_REPEATS": "1",
}


def tiny_job_spec(model: Path, **overrides: object) -> JobSpec:
    """A job on the tiny Llama that runs in seconds; ``overrides`` replace whole top-level fields."""
    from search.spec import JobSpec

    fields: dict[str, object] = dict(
        model=str(model),
        target={"param_ratio": 0.6},
        calibration={"n_samples": 4, "seq_len": 64, "heldout_samples": 4},
        search_space={"ffn_alignment": 8},
    )
    return JobSpec(**(fields | overrides))


@pytest.fixture(scope="session")
def postgres_database_factory() -> Iterator[Callable[[], str]]:
    """Creates fresh, empty databases on demand (``prunesearch_test_<hex>``); drops them all at the end."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    created: list[str] = []

    def create() -> str:
        name = f"prunesearch_test_{secrets.token_hex(6)}"
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        except OperationalError as error:
            pytest.fail(
                f"PostgreSQL is unreachable at {make_url(POSTGRES_ADMIN_URL)!r}: {error.orig}. "
                "Start it, or set PRUNESEARCH_TEST_ADMIN_URL to a superuser URL of a running server.",
                pytrace=False,
            )
        created.append(name)
        return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    yield create
    with admin.connect() as connection:
        for name in created:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(postgres_database_factory: Callable[[], str]) -> str:
    """A fresh, empty PostgreSQL database for this test session."""
    return postgres_database_factory()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number no other concurrent test session uses, flushed at start and end."""
    server = redis.Redis.from_url(REDIS_SERVER_URL, socket_connect_timeout=5)
    token = secrets.token_hex(8)
    try:
        number = next(
            (n for n in range(1, 16) if server.set(f"{_REDIS_LOCK_PREFIX}{n}", token, nx=True, ex=_REDIS_LOCK_TTL_S)),
            None,
        )
    except redis.ConnectionError as error:
        pytest.fail(
            f"Redis is unreachable at {REDIS_SERVER_URL}: {error}. "
            "Start it, or set PRUNESEARCH_TEST_REDIS_URL to a running server.",
            pytrace=False,
        )
    if number is None:
        pytest.fail("every Redis database 1..15 is locked by another test session", pytrace=False)
    db_url = urlsplit(REDIS_SERVER_URL)._replace(path=f"/{number}").geturl()
    database = redis.Redis.from_url(db_url)
    database.flushdb()  # a crashed session may have left messages behind
    yield db_url
    database.flushdb()
    database.close()
    if server.get(f"{_REDIS_LOCK_PREFIX}{number}") == token.encode():
        server.delete(f"{_REDIS_LOCK_PREFIX}{number}")
    server.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file in the test's temporary folder (absolute path, so four slashes)."""
    return f"sqlite:///{tmp_path / 'prunesearch.sqlite3'}"


@pytest.fixture
def tiny_model_config_dir(tmp_path: Path) -> Path:
    """A model folder with only the ``config.json`` of a tiny GQA Llama: enough to validate jobs, no weights."""
    model_dir = tmp_path / "tiny-llama-config"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG, indent=2))
    return model_dir


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 4-layer Llama (2 KV groups, GQA; random weights) with a BPE tokenizer, built from a config."""
    from search.demo import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("tiny-llama"), size="tiny")


def pytest_configure(config: pytest.Config) -> None:
    # What the tests' own process writes under the default data folder (a filesystem broker's
    # folders, say) goes to a folder of the session's, never to the user's per-user data folder.
    os.environ["PRUNESEARCH_DATA_DIR"] = tempfile.mkdtemp(prefix="prunesearch-tests-")
    # Workers and CLI commands the tests run in this process, or start with its environment.
    for name, value in SMALL_SPEED_WORKLOAD.items():
        os.environ.setdefault(name, value)
    if proctree.supported():
        # Orphans (a worker whose parent died) are adopted by pytest, so the check below sees them.
        proctree.become_subreaper()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if proctree.supported():
        _fail_on_survivors(session)
    shutil.rmtree(os.environ["PRUNESEARCH_DATA_DIR"], ignore_errors=True)


def _fail_on_survivors(session: pytest.Session) -> None:
    """Fail the run if a process the tests started is still running (then kill it)."""
    left = proctree.survivors(proctree.descendants(os.getpid()), within=PROCESS_EXIT_GRACE_S)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(left)} process(es) started by the tests outlived them (killed now):"]
    lines += [f"  pid {process.pid}: {process.command}" for process in left]
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "processes left running", red=True)
        for line in lines:
            reporter.write_line(line)
    proctree.kill(left)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
