"""The worker's engine on PostgreSQL: commits that do not wait for the disk, connections checked
without a ping at every checkout, and replaced when the server has dropped them."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from workers.runtime import worker_engine


def test_the_workers_engine_commits_without_waiting_for_the_disk(postgres_url: str) -> None:
    engine = worker_engine(postgres_url)
    try:
        assert not engine.pool._pre_ping  # checked by a look at the socket instead (studystore.postgres)
        with engine.connect() as connection:
            assert connection.execute(text("SHOW synchronous_commit")).scalar_one() == "off"
    finally:
        engine.dispose()


def test_the_workers_engine_replaces_connections_the_server_dropped(postgres_url: str) -> None:
    """What a PostgreSQL restart does to the pool: every idle connection is terminated."""
    engine = worker_engine(postgres_url)
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as connection:
            assert connection.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar_one()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        admin.dispose()
        engine.dispose()
