"""Fixtures for the service tests: a migrated PostgreSQL database, the real Redis broker, clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from service import migrate
from service.api.app import create_app
from service.db import make_engine, make_sessionmaker
from service.models import Job, TrialResult
from service.settings import Settings
from tests.service.helpers import make_settings


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url: str) -> str:
    migrate.upgrade(postgres_url)
    return postgres_url


@pytest.fixture(scope="session")
def postgres_engine(migrated_postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(migrated_postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clean_postgres(postgres_engine: Engine) -> Engine:
    """The migrated database with empty tables: API calls commit, so tests clean up by deleting."""
    with postgres_engine.begin() as connection:
        connection.execute(delete(TrialResult))
        connection.execute(delete(Job))
    return postgres_engine


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.delete("celery")
    yield client
    client.close()


@pytest.fixture
def pg_settings(clean_postgres: Engine, migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", database_url=migrated_postgres_url, broker_url=redis_url)


@pytest.fixture
def client_for() -> Iterator[Callable[[Settings], TestClient]]:
    """Builds a TestClient (lifespan started) for given settings; closes them all after the test."""
    clients: list[TestClient] = []

    def build(settings: Settings) -> TestClient:
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def pg_client(client_for: Callable[[Settings], TestClient], pg_settings: Settings) -> TestClient:
    return client_for(pg_settings)


@pytest.fixture
def pg_session(clean_postgres: Engine) -> Iterator[Session]:
    with make_sessionmaker(clean_postgres)() as session:
        yield session


@pytest.fixture
def sqlite_settings(sqlite_url: str, tmp_path: Path) -> Settings:
    migrate.upgrade(sqlite_url)
    return make_settings(tmp_path / "data", database_url=sqlite_url)
