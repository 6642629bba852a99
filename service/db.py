"""Engine and sessions. The API and the worker build theirs with the same function."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service import jsonsafe

# Seconds a SQLite writer waits for the lock: the API and a worker write the same file.
SQLITE_BUSY_TIMEOUT_S = 30


def make_engine(url: str, *, sqlite_foreign_keys: bool = True) -> Engine:
    """An engine for ``url``. For SQLite: creates the file's folder, WAL, busy timeout, foreign keys.

    ``sqlite_foreign_keys=False`` is for migrations: SQLite batch migrations rebuild tables, and
    with enforcement on, dropping the old ``job`` table would cascade-delete every trial.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "json_serializer": jsonsafe.dumps}
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine, foreign_keys=sqlite_foreign_keys)
    return engine


def _configure_sqlite(engine: Engine, *, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # WAL lets the API read while a worker writes; busy_timeout makes writers wait, not fail.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: routes shape responses from rows after committing.
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
