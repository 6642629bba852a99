"""Engine and sessions. The API and the worker build theirs with the same function. And ``AsyncReads``:
the API's per-request reads in the event loop, on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from service import jsonsafe

# Seconds a SQLite writer waits for the lock: the API and a worker write the same file.
SQLITE_BUSY_TIMEOUT_S = 30


def make_engine(
    url: str, *, sqlite_foreign_keys: bool = True, pre_ping: bool = True, synchronous_commit: bool = True
) -> Engine:
    """An engine for ``url``. For SQLite: creates the file's folder, WAL, busy timeout, foreign keys.

    ``sqlite_foreign_keys=False`` is for migrations: SQLite batch migrations rebuild tables, and
    with enforcement on, dropping the old ``job`` table would cascade-delete every trial.
    ``pre_ping=False`` leaves checking a pooled connection to the caller (the worker's engine looks
    at the socket instead: ``workers.runtime.worker_engine``). ``synchronous_commit=False``: a
    commit returns before the disk has it, set when a connection opens, not per transaction. On
    PostgreSQL a server crash may lose the last fraction of a second of commits; on SQLite (WAL,
    ``synchronous=NORMAL``) a power loss may, a crashed process never. The database stays consistent.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": pre_ping, "json_serializer": jsonsafe.dumps}
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    elif not synchronous_commit and parsed.get_backend_name() == "postgresql":
        given = parsed.query.get("options")  # the URL's own server options, kept (connect_args replace them)
        kwargs["connect_args"] = {"options": " ".join(filter(None, [given, "-c synchronous_commit=off"]))}
    engine = create_engine(parsed, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine, foreign_keys=sqlite_foreign_keys, synchronous=synchronous_commit)
    return engine


def _configure_sqlite(engine: Engine, *, foreign_keys: bool, synchronous: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # WAL lets the API read while a worker writes; busy_timeout makes writers wait, not fail.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            if not synchronous:  # in WAL mode, no fsync per commit (the study's storage does the same)
                cursor.execute("PRAGMA synchronous=NORMAL")
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


# --- reads in the event loop ------------------------------------------------------------------------


@dataclass(frozen=True)
class _PreparedRead:
    """A statement compiled once for the engine's dialect, and the result processors of its columns."""

    sql: str
    processors: tuple[Callable[[Any], Any] | None, ...]

    def row(self, values: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(
            value if process is None else process(value) for process, value in zip(self.processors, values, strict=True)
        )


class _LoopConnections:
    """The pool's connections in one event loop: a psycopg async connection belongs to the loop that
    opened it, and an ``asyncio`` semaphore to the loop that first waited on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.free = asyncio.Semaphore(size)
        self.idle: list[psycopg.AsyncConnection[Any]] = []

    def drop_idle(self) -> None:
        """Close the idle connections without awaiting: their loop has ended (a test client's portal),
        or one of them was found dead, so the others, opened before, most likely are too."""
        for connection in self.idle:
            _close_now(connection)
        self.idle.clear()


def _close_now(connection: psycopg.AsyncConnection[Any]) -> None:
    # Without awaiting: the connection is dropped mid-use (cancelled, broken) or its loop is gone.
    connection.pgconn.finish()


class AsyncReads:
    """Short read-only statements run in the event loop, on a few autocommit psycopg connections of
    their own, for the API's guard, which reads the caller's key and the job's stamp on every request.

    Through the ``Engine`` that read needs a thread-pool hop, and a ``Session``, a pool checkout with
    its liveness ping and SQLAlchemy's execution machinery cost about 0.65 ms of CPU per read; this is
    about 0.2 ms (one prepared statement, no transaction), and the request waits for the database in
    the event loop, holding no thread. SQLAlchemy's own asyncio engine costs more than the sync path
    (0.8-0.9 ms: greenlet switches and the same machinery), so the statements are compiled by
    SQLAlchemy once and run on psycopg directly.

    No ping before each use: a connection that went stale while idle (server restart, idle timeout)
    fails its read, is closed with the other idle ones, and the read is retried once on a fresh
    connection. Errors come out as SQLAlchemy's (``DBAPIError`` and its subclasses, ``TimeoutError``
    for a full pool), as the engine's would, so the API's single handler answers them alike.

    Only for PostgreSQL through psycopg (``for_engine`` answers ``None`` otherwise). The statements'
    parameters are sent as given (no bind processing): pass strings and numbers.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        size: int,
        timeout_s: float,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
    ) -> None:
        self._dialect = engine.dialect
        self._size = size
        self._timeout_s = timeout_s
        self._connect = connect
        self._prepared: dict[Select[Any], _PreparedRead] = {}
        self._connections: _LoopConnections | None = None

    @classmethod
    def for_engine(cls, engine: Engine, *, size: int = 8, timeout_s: float = 30.0) -> AsyncReads | None:
        """Reads beside ``engine``'s pool, to the same database with the same connect arguments;
        ``None`` unless it is PostgreSQL through psycopg (SQLite keeps the thread-pool path)."""
        if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
            return None
        args, kwargs = engine.dialect.create_connect_args(engine.url)

        async def connect() -> psycopg.AsyncConnection[Any]:
            return await psycopg.AsyncConnection.connect(*args, **kwargs, autocommit=True)

        return cls(engine, size=size, timeout_s=timeout_s, connect=connect)

    def _prepare(self, statement: Select[Any]) -> _PreparedRead:
        prepared = self._prepared.get(statement)
        if prepared is None:
            compiled = statement.compile(dialect=self._dialect)
            processors = tuple(
                column.type.dialect_impl(self._dialect).result_processor(self._dialect, None)
                for column in statement.selected_columns
            )
            prepared = self._prepared[statement] = _PreparedRead(str(compiled), processors)
        return prepared

    async def one_or_none(self, statement: Select[Any], parameters: dict[str, Any]) -> tuple[Any, ...] | None:
        """The row a statement selects by a unique key (its columns processed as the engine would), or
        ``None``. A second row is not looked for."""
        prepared = self._prepare(statement)
        for attempt in range(2):
            connection, reused = await self._checkout()
            try:
                cursor = await connection.execute(prepared.sql, parameters)
                values = await cursor.fetchone()
            except psycopg.OperationalError as error:
                _close_now(connection)
                self._checkin(None)
                if reused and attempt == 0:
                    # Went stale while idle (a server restart drops them all): once more, on a fresh one.
                    self._loop_connections().drop_idle()
                    continue
                raise DBAPIError.instance(prepared.sql, parameters, error, psycopg.Error) from error
            except psycopg.Error as error:
                _close_now(connection)
                self._checkin(None)
                raise DBAPIError.instance(prepared.sql, parameters, error, psycopg.Error) from error
            except BaseException:
                _close_now(connection)  # cancelled mid-read: the connection's state is unknown
                self._checkin(None)
                raise
            self._checkin(connection)
            return None if values is None else prepared.row(values)
        raise AssertionError("unreachable")

    def _loop_connections(self) -> _LoopConnections:
        loop = asyncio.get_running_loop()
        connections = self._connections
        if connections is None or connections.loop is not loop:
            if connections is not None:
                connections.drop_idle()
            connections = self._connections = _LoopConnections(loop, self._size)
        return connections

    async def _checkout(self) -> tuple[psycopg.AsyncConnection[Any], bool]:
        """A connection, and whether it was used before (so may have gone stale)."""
        connections = self._loop_connections()
        if connections.free.locked():
            try:
                async with asyncio.timeout(self._timeout_s):
                    await connections.free.acquire()
            except TimeoutError as error:
                raise PoolTimeout(
                    f"no connection for a read within {self._timeout_s:.0f} s ({self._size} in use)"
                ) from error
        else:
            await connections.free.acquire()  # free now: returns without waiting
        if connections.idle:
            return connections.idle.pop(), True
        try:
            return await self._connect(), False
        except psycopg.Error as error:
            connections.free.release()
            raise DBAPIError.instance("connect", None, error, psycopg.Error) from error
        except BaseException:
            connections.free.release()
            raise

    def _checkin(self, connection: psycopg.AsyncConnection[Any] | None) -> None:
        connections = self._loop_connections()
        if connection is not None:
            connections.idle.append(connection)
        connections.free.release()

    async def close(self) -> None:
        """Close the idle connections (at shutdown, in the loop that used them)."""
        connections, self._connections = self._connections, None
        if connections is None:
            return
        for connection in connections.idle:
            await connection.close()
        connections.idle.clear()
