"""PostgreSQL's side of the batched storage: a trial's writes in as few round trips as the server allows.

On SQLite a statement is a function call; on PostgreSQL it is a round trip to another process, and
so are the transaction's ``BEGIN`` and ``COMMIT`` and the pool's liveness ping. On Optuna's
statements the batched storage spent 38 round trips on a trial of 128 parameters (TPE,
benchmarks/orchestration.py); with these it spends 6: four reads of the study (``BatchedRDBStorage``
runs each as one query outside a transaction), the creation and the final write. A running
trial's final write is one statement (the state change and every row, joined to the state change so
that nothing lands when another process finished the trial first), a trial is created in one
transaction sent as one pipeline, and a connection taken from the pool is pinged only when it has
sat idle long or the server has said something on it (what a terminated backend does), not at every
checkout.

The statements are built from Optuna's table definitions, so they write Optuna's schema as it is.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import functools
import json
import select
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql import Executable

# A connection idle for longer than this is pinged before use; one used more recently is pinged only
# when its socket has something to read (a terminated backend's last message, or the closed socket).
IDLE_PING_S = 30.0
_CHECKED_IN = "prunesearch_checked_in"


def watch_connections(engine: Engine) -> None:
    """Replace ``pool_pre_ping``'s round trip at every checkout with a look at the socket: a
    backend that was terminated (a server restart, ``pg_terminate_backend``) has sent its last
    message and closed the connection, so the socket reads as ready and the connection is pinged,
    and replaced if it fails. A connection idle for ``IDLE_PING_S`` is pinged anyway. Used by this
    storage's engine and by the worker's own (``workers.runtime.worker_engine``)."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connected(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @sqlalchemy.event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @sqlalchemy.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
        idle = time.monotonic() - record.info.get(_CHECKED_IN, 0.0)
        if idle < IDLE_PING_S and not _has_input(dbapi_connection):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # the pool discards this connection and opens another
            raise DisconnectionError(f"connection failed its ping: {error}") from error


def _has_input(dbapi_connection: Any) -> bool:
    """Whether an idle connection's socket is readable (or gone): the server never speaks first on
    a healthy idle connection that never listens (no LISTEN), so it has closed or is closing it."""
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except Exception:  # a closed connection has no descriptor: ping it, which fails and replaces it
        return True


_TRIALS = models.TrialModel.__table__
_STUDIES = models.StudyModel.__table__


def create_running_trial(connection: sqlalchemy.Connection, study_id: int, started: datetime.datetime) -> Any:
    """Create a running trial as Optuna does (numbered under the study's lock), in one transaction
    sent as one psycopg pipeline: ``BEGIN``, lock, insert, ``COMMIT`` in one round trip instead of
    Optuna's six. ``connection`` is in autocommit mode (the transaction is spelled out). Returns
    ``(trial_id, number)``, or None when the study does not exist."""
    raw = connection.connection.driver_connection
    lock, insert = _creation(connection.dialect)
    try:
        with raw.pipeline():
            raw.execute("BEGIN")
            # The lock is a statement of its own: the next one (a new snapshot, under READ
            # COMMITTED) counts every trial created before the lock was granted.
            raw.execute(lock, {"study": study_id})
            created = raw.execute(insert, {"study": study_id, "started": started, "running": TrialState.RUNNING.name})
            raw.execute("COMMIT")
    except BaseException:
        # A failed statement leaves the transaction open and aborted; a dead connection fails this
        # too, and the pool discards it when it comes back.
        with contextlib.suppress(Exception):
            raw.rollback()
        raise
    return created.fetchone()


@functools.cache
def _creation(dialect: sqlalchemy.Dialect) -> tuple[str, str]:
    """The SQL of ``create_running_trial``'s two statements, with psycopg's named placeholders."""
    study = sqlalchemy.bindparam("study", type_=sqlalchemy.Integer)
    # Optuna's trial creation takes the same lock, so trials are numbered one creation at a time.
    lock = sqlalchemy.select(_STUDIES.c.study_id).where(_STUDIES.c.study_id == study).with_for_update()
    return str(lock.compile(dialect=dialect)), str(numbered_insert().compile(dialect=dialect))


@functools.cache
def numbered_insert() -> Executable:
    """A running trial of study ``study``, numbered as Optuna numbers it: by the count of the
    study's trials before it, all of them when creations are serialised (under PostgreSQL's lock on
    the study, or SQLite's one writer: there a single statement is atomic). Returns ``(trial_id,
    number)``, or no row when the study does not exist."""
    study = sqlalchemy.bindparam("study", type_=sqlalchemy.Integer)
    number = sqlalchemy.select(sqlalchemy.func.count()).where(_TRIALS.c.study_id == study).scalar_subquery()
    source = sqlalchemy.select(
        number,
        _STUDIES.c.study_id,
        sqlalchemy.bindparam("running", type_=_TRIALS.c.state.type),
        sqlalchemy.bindparam("started", type_=_TRIALS.c.datetime_start.type),
    ).where(_STUDIES.c.study_id == study)
    return (
        sqlalchemy.insert(_TRIALS)
        .from_select(["number", "study_id", "state", "datetime_start"], source)
        .returning(_TRIALS.c.trial_id, _TRIALS.c.number)
    )


# The tables a trial's final write fills: (model, the column unique per trial, the other columns).
_TRIAL_ROWS: dict[str, tuple[type[Any], str, tuple[str, ...]]] = {
    "params": (models.TrialParamModel, "param_name", ("param_value", "distribution_json")),
    "user_attrs": (models.TrialUserAttributeModel, "key", ("value_json",)),
    "system_attrs": (models.TrialSystemAttributeModel, "key", ("value_json",)),
    "intermediate_values": (
        models.TrialIntermediateValueModel,
        "step",
        ("intermediate_value", "intermediate_value_type"),
    ),
    "values": (models.TrialValueModel, "objective", ("value", "value_type")),
}


@functools.cache
def finish_trial() -> Executable:
    """A running trial's final state and all its rows, in one statement: the state change is a
    conditional UPDATE (the trial must still be running), and each table's rows are inserted from a
    JSON document joined to what it returned, so when another process finished the trial first
    nothing is written and the statement returns 0. A row whose key the trial already has (a popped
    baseline's or a retried trial's) replaces it. One statement is atomic without a transaction."""
    finished = (
        sqlalchemy.update(_TRIALS)
        .where(
            _TRIALS.c.trial_id == sqlalchemy.bindparam("trial"),
            _TRIALS.c.state == TrialState.RUNNING,
        )
        .values(
            {
                _TRIALS.c.state: sqlalchemy.bindparam("new_state", type_=_TRIALS.c.state.type),
                _TRIALS.c.datetime_complete: sqlalchemy.bindparam("completed", type_=_TRIALS.c.datetime_complete.type),
            }
        )
        .returning(_TRIALS.c.trial_id)
        .cte("finished")
    )
    inserts = [_insert_rows(finished, name, *table) for name, table in _TRIAL_ROWS.items()]
    return sqlalchemy.select(sqlalchemy.func.count()).select_from(finished).add_cte(*inserts)


def _insert_rows(finished: Any, name: str, model: type[Any], key: str, columns: tuple[str, ...]) -> Any:
    """``INSERT ... SELECT`` of one table's rows, given as a JSON array of objects: one text
    parameter that Python's JSON encoder writes at C speed (a text array of a hundred distributions
    is escaped character by character), and a fixed statement whatever the number of rows."""
    table = model.__table__
    names = (key, *columns)
    rows = (
        sqlalchemy.func.json_to_recordset(
            sqlalchemy.cast(sqlalchemy.bindparam(f"new_{name}", type_=sqlalchemy.Text), postgresql.JSON)
        )
        .table_valued(*(sqlalchemy.column(c, table.c[c].type) for c in names))
        .render_derived(name=f"new_{name}", with_types=True)
    )
    source = sqlalchemy.select(finished.c.trial_id, *(rows.c[c] for c in names)).join_from(
        finished, rows, sqlalchemy.true()
    )
    insert = postgresql.insert(table).from_select(["trial_id", *names], source)
    return insert.on_conflict_do_update(
        index_elements=[table.c.trial_id, table.c[key]], set_={c: insert.excluded[c] for c in columns}
    ).cte(f"insert_{name}")


def finish_parameters(
    trial_id: int, state: TrialState, datetime_complete: Any, rows: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """The parameters of ``finish_trial``: ``rows`` maps each of its tables ("params",
    "user_attrs", "system_attrs", "intermediate_values", "values") to rows as column dicts."""
    parameters: dict[str, Any] = {"trial": trial_id, "new_state": state, "completed": datetime_complete}
    for name in _TRIAL_ROWS:
        # allow_nan=False: a float column never holds NaN or infinity here (Optuna keeps those as a
        # NULL and a value type), and PostgreSQL's JSON has no spelling for them.
        parameters[f"new_{name}"] = json.dumps(rows.get(name, ()), default=_enum_name, allow_nan=False)
    return parameters


def _enum_name(value: Any) -> str:
    """An enum as SQLAlchemy's ``Enum`` columns store it: the member's name."""
    if isinstance(value, enum.Enum):
        return value.name
    raise TypeError(f"{type(value).__name__} is not a column value")


@functools.cache
def set_running_trial_system_attr() -> Executable:
    """A system attribute of a trial that is still running, in one statement (Optuna reads the
    trial, then writes, in a transaction); returns no row when the trial is not running."""
    table = models.TrialSystemAttributeModel.__table__
    source = sqlalchemy.select(
        _TRIALS.c.trial_id,
        sqlalchemy.bindparam("attr_key", type_=table.c.key.type),
        sqlalchemy.bindparam("attr_value", type_=table.c.value_json.type),
    ).where(_TRIALS.c.trial_id == sqlalchemy.bindparam("trial"), _TRIALS.c.state == TrialState.RUNNING)
    insert = postgresql.insert(table).from_select(["trial_id", "key", "value_json"], source)
    return insert.on_conflict_do_update(
        index_elements=[table.c.trial_id, table.c.key], set_={"value_json": insert.excluded.value_json}
    ).returning(table.c.trial_id)
