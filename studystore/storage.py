"""Optuna's storage for a search: RDB with heartbeats, a running trial's writes batched, and SQLite
tuned for several workers.

Optuna's RDB storage commits every sampled parameter and attribute on its own: a per-layer trial of
an 8B model (64 parameters, a dozen attributes) made ~80 commits, 0.1–0.4 s of CPU between GPU
steps (benchmarks/orchestration.py). ``BatchedRDBStorage`` keeps what a running trial of this
process writes in memory and commits it with the trial's final state in one transaction. The
tables are Optuna's own, so optuna-dashboard, ``optuna.load_study`` and the other workers read the
study as before; what they no longer see is a trial's parameters while it runs. On PostgreSQL, where
each statement is a round trip, a trial's creation and its final write are one round trip each
(``studystore.postgres``), a read of the study is one query outside a transaction, and a pooled
connection is not pinged at every checkout.
"""

from __future__ import annotations

import datetime
import functools
import json
import sqlite3
import threading
from collections.abc import Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy
from optuna import distributions
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

# The table classes of Optuna's RDB schema (versioned by Optuna's own migrations); the batched write
# inserts into them. Optuna has no public bulk write.
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects import postgresql

from studystore import postgres

# System attributes another process must see at once: the evo sampler's candidate claims
# (search.evo.CLAIM_ATTR, the same string: tests/search/test_batched_storage.py checks it), re-checked
# by the other workers before they propose.
IMMEDIATE_SYSTEM_ATTRS = ("evo:candidate",)

_FINAL_KEPT = 256  # finished trials kept for the next read of the study (normally one, read at once)


def make_storage(url: str, *, heartbeat_interval: int = 30, grace_period: int = 120, max_retry: int = 2) -> RDBStorage:
    """RDB storage with heartbeats (a trial whose worker died is failed and retried) and batched trial writes."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["pool_pre_ping"] = True
        engine_kwargs["connect_args"] = {"timeout": 30, "factory": _WalConnection}
    elif url.startswith("postgresql"):
        # A commit need not wait for the server's disk (2 ms here, four commits a trial): a trial lost
        # with a crashed server's last fraction of a second is failed by its heartbeat and run again.
        # The database stays consistent either way. No pre-ping: the storage watches its
        # connections without a round trip (``postgres.watch_connections``).
        engine_kwargs["connect_args"] = {"options": "-c synchronous_commit=off"}
    else:
        engine_kwargs["pool_pre_ping"] = True
    return BatchedRDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
    )


@dataclass
class _Pending:
    """A running trial of this process: what the database holds of it, and the writes not yet committed."""

    trial: FrozenTrial  # the database's copy with the writes below applied: what reads of it return
    stored: FrozenTrial  # the database's copy: the rows the final write replaces rather than inserts
    params: dict[str, tuple[float, distributions.BaseDistribution]] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    intermediate_values: dict[int, float] = field(default_factory=dict)


class BatchedRDBStorage(RDBStorage):
    """``RDBStorage`` that commits a running trial's parameters, attributes and intermediate values
    with its final state, in one transaction.

    Trials this process creates (``study.ask``) or pops from the queue (an enqueued baseline) are
    kept in memory while they run; reads of them are answered from memory, reads of every other
    trial from the database. A worker killed mid-trial leaves its trial running without parameters:
    the missed heartbeats fail it and the retry callback queues it again, as before (a popped
    baseline keeps its fixed parameters, which were written when it was enqueued). Finished trials
    are exactly what plain ``RDBStorage`` writes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[int, _Pending] = {}
        # Trials finished here, until a read of the study has taken them (a trial is final once finished).
        self._final: dict[int, FrozenTrial] = {}
        self._lock = threading.RLock()  # heartbeat threads and a prefetching sampler share the storage
        self._one_read = _OneRead()
        self._watch()

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["_pending"], state["_final"], state["_lock"], state["_one_read"]
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._pending, self._final, self._lock, self._one_read = {}, {}, threading.RLock(), _OneRead()
        self._watch()

    @contextmanager
    def one_read(self) -> Iterator[None]:
        """In this thread, until the block ends or this process writes, every read of a study is
        answered by the block's first read of it: reads microseconds apart (the loop's count of
        complete trials, then ``ask``'s look for waiting trials; the sampler's search space, then
        its trials, on the trial's first suggest) make one query, not one each.
        What another process writes meanwhile is seen by the next read after the block, as if it
        had been written a moment later."""
        self._one_read.answers = {}
        try:
            yield
        finally:
            self._one_read.answers = None

    def _watch(self) -> None:
        self._postgres = self.engine.dialect.name == "postgresql"
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._pipelined = self._postgres and self.engine.dialect.driver == "psycopg"  # psycopg 3's pipeline mode
        if self._postgres and not self.engine_kwargs.get("pool_pre_ping"):
            postgres.watch_connections(self.engine)

    @contextmanager
    def _autocommit(self) -> Iterator[sqlalchemy.Connection]:
        """A connection whose every statement is its own transaction: a single statement needs no
        ``BEGIN`` and ``COMMIT`` (two round trips on PostgreSQL), and a read none either."""
        with self.engine.connect() as connection:
            yield connection.execution_options(isolation_level="AUTOCOMMIT")

    # A trial becomes this process's when it is created running, or popped from the queue.

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        self._one_read.forget()
        if (self._pipelined or self._sqlite) and template_trial is None:
            frozen = self._create_running_trial(study_id)
        else:
            frozen = super()._create_new_trial(study_id, template_trial)
        if frozen.state == TrialState.RUNNING:
            with self._lock:
                self._pending[frozen._trial_id] = _Pending(_copy(frozen), frozen)
        return frozen

    def _create_running_trial(self, study_id: int) -> FrozenTrial:
        """What ``study.ask`` creates, as Optuna creates it: in one round trip on PostgreSQL, in one
        statement on SQLite (Optuna's ORM session takes milliseconds)."""
        now = datetime.datetime.now()
        with self._autocommit() as connection:
            if self._sqlite:
                parameters = {"study": study_id, "running": TrialState.RUNNING, "started": _utc(now)}
                created = connection.execute(postgres.numbered_insert(), parameters).first()
            else:
                created = postgres.create_running_trial(connection, study_id, _utc(now))
        if created is None:
            raise KeyError(models.NOT_FOUND_MSG)
        trial_id, number = created
        return _running_trial(trial_id, number, now)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        self._one_read.forget()
        with self._lock:
            pending = self._pending.pop(trial_id, None)
        if pending is None and state == TrialState.RUNNING:
            return self._pop(trial_id)
        if pending is None:
            return super().set_trial_state_values(trial_id, state, values)
        try:
            final = self._finish(trial_id, pending, state, values)
        except Exception:
            with self._lock:
                self._pending[trial_id] = pending  # nothing was committed: the writes are still to make
            raise
        with self._lock:
            self._final[trial_id] = final
            while len(self._final) > _FINAL_KEPT:
                del self._final[next(iter(self._final))]
        return True

    def _pop(self, trial_id: int) -> bool:
        """Take a waiting trial (an enqueued baseline, a retry): one conditional UPDATE, so of two
        workers that pop the same trial at once exactly one gets it (Optuna's read-then-write lets
        both through on SQLite, which has no row locks). The trial is then this process's."""
        trials = models.TrialModel.__table__
        with self._autocommit() as connection:
            taken = connection.execute(
                sqlalchemy.update(trials)
                .where(trials.c.trial_id == trial_id, trials.c.state == TrialState.WAITING)
                .values(state=TrialState.RUNNING, datetime_start=_utc(datetime.datetime.now()))
            )
        if taken.rowcount != 1:
            return False
        stored = super().get_trial(trial_id)
        with self._lock:
            self._pending[trial_id] = _Pending(_copy(stored), stored)
        return True

    # Writes to a pending trial stay in memory.

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
        previous_distribution: distributions.BaseDistribution | None,
    ) -> None:
        self._one_read.forget()
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is not None:
                if previous_distribution is not None:
                    distributions.check_distribution_compatibility(previous_distribution, distribution)
                pending.params[param_name] = (param_value_internal, distribution)
                pending.trial.params[param_name] = distribution.to_external_repr(param_value_internal)
                pending.trial.distributions[param_name] = distribution
                return
        super()._set_trial_param(trial_id, param_name, param_value_internal, distribution, previous_distribution)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._one_read.forget()
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is not None:
                pending.user_attrs[key] = pending.trial.user_attrs[key] = _json_copy(value)
                return
        super().set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._one_read.forget()
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is not None:
                pending.trial.system_attrs[key] = _json_copy(value)
                if not key.startswith(IMMEDIATE_SYSTEM_ATTRS):
                    pending.system_attrs[key] = pending.trial.system_attrs[key]
                    return
        if pending is not None and self._postgres:
            with self._autocommit() as connection:
                written = connection.execute(
                    postgres.set_running_trial_system_attr(),
                    {"trial": trial_id, "attr_key": key, "attr_value": json.dumps(value)},
                ).first()
            if written is not None:
                return
        super().set_trial_system_attr(trial_id, key, value)  # or Optuna's error: the trial has finished

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._one_read.forget()
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is not None:
                pending.intermediate_values[step] = pending.trial.intermediate_values[step] = intermediate_value
                return
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    # Reads of a pending trial come from memory.

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is not None:
                return _copy(pending.trial)
            if trial_id in self._final:
                return _copy(self._final[trial_id])
        return super().get_trial(trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is not None and param_name in pending.params:
                return pending.params[param_name][0]
        return super().get_trial_param(trial_id, param_name)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is not None:
                return dict(pending.trial.user_attrs)
        return super().get_trial_user_attrs(trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is not None:
                return dict(pending.trial.system_attrs)
        return super().get_trial_system_attrs(trial_id)

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        """Optuna's cached storage asks for the trials that may have changed (the unfinished ones and
        the new ones) several times a trial. One light query, outside a transaction, says whether the
        study exists and which trials they are and in what state; only those this process does not
        hold in memory (running here, or finished here and not read back yet) are loaded with their
        parameters and attributes. Inside ``one_read``, only the block's first read of the study is made."""
        shared = self._one_read.trials(study_id, states, included_trial_ids, trial_id_greater_than)
        if shared is not None:
            return shared
        trials = self._read_trials(study_id, states, included_trial_ids, trial_id_greater_than)
        self._one_read.keep(study_id, states, included_trial_ids, trial_id_greater_than, trials)
        return trials

    def _read_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        with self._autocommit() as connection:  # both of the read's statements on one checked-out connection
            return self._read_changed(connection, study_id, states, included_trial_ids, trial_id_greater_than)

    def _read_changed(
        self,
        connection: sqlalchemy.Connection,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        """One light query says whether the study exists and which trials changed, in what state; only
        those this process does not hold in memory (running here, or finished here and not read back
        yet) are loaded with their parameters and attributes, by a second query."""
        found = connection.execute(
            _changed_trials(self._postgres, states is not None),
            {
                "study": study_id,
                "states": None if states is None else list(states),  # type: ignore[call-overload]
                "included": [i for i in included_trial_ids if i <= trial_id_greater_than],
                "newer_than": trial_id_greater_than,  # -1 (trial ids start at 1): every trial
            },
        ).all()
        if not found:
            raise KeyError(models.NOT_FOUND_MSG)  # what Optuna raises for a study that is gone
        rows = [(trial_id, state) for trial_id, state in found if trial_id is not None]
        if not rows:
            return []
        known: dict[int, FrozenTrial] = {}
        with self._lock:
            for trial_id, state in rows:
                pending, final = self._pending.get(trial_id), self._final.get(trial_id)
                if pending is not None and state == TrialState.RUNNING:
                    known[trial_id] = _copy(pending.trial)
                elif final is not None and state == final.state:
                    known[trial_id] = _copy(self._final.pop(trial_id))
        # Every other trial (another worker's, running or newly finished) is loaded in one query of all
        # its rows. Optuna's own load (an ORM session, a query per table) of another worker's finished
        # trial of 96 parameters cost 3.2-4.1 ms on SQLite and 6.7 ms on PostgreSQL, this 0.9-1.2 and
        # 1.7 ms: the most of what a second worker added (benchmarks/shared_study.py).
        loaded = self._load_trials(connection, [trial_id for trial_id, _ in rows if trial_id not in known])
        if states is not None:  # a trial may have moved on since the first query: its rows say how
            loaded = [t for t in loaded if t.state in states]
        return sorted([*known.values(), *loaded], key=lambda t: t._trial_id)

    def _load_trials(self, connection: sqlalchemy.Connection, trial_ids: list[int]) -> list[FrozenTrial]:
        """Trials ``trial_ids`` as stored, built as Optuna builds them, from one query (a trial gone
        since is left out). Trials created after the caller's query are left to the next read of the
        study, which asks for every trial after the last finished one it returned."""
        if not trial_ids:
            return []
        # Sorted here, not by the database: a sort per part of the union cost more than this.
        found = sorted(
            connection.execute(_trial_rows(self._postgres), {"ids": sorted(trial_ids)}).all(),
            key=lambda r: (r.kind, r.row_id),  # each trial's own row first, then its rows in Optuna's order
        )
        built: dict[int, _Built] = {}
        for row in found:
            if row.kind == _TRIAL:
                built[row.trial_id] = _Built(row)
            else:  # one statement reads one snapshot: a row's trial is there
                built[row.trial_id].add(row)
        return [trial.frozen() for trial in built.values()]

    def _build_frozen_trial_from_trial_model(self, trial: Any) -> FrozenTrial:
        """Optuna's conversion of a trial's rows, with each distinct distribution parsed once: a trial
        read back with a hundred parameters otherwise parses 200 JSON distributions (~7 ms)."""
        values: list[float] | None = None
        if trial.values:
            values = [0.0] * len(trial.values)
            for row in trial.values:
                values[row.objective] = models.TrialValueModel.stored_repr_to_value(row.value, row.value_type)
        params = sorted(trial.params, key=lambda p: p.param_id)
        parsed = {p.param_name: _distribution(p.distribution_json) for p in params}
        return FrozenTrial(
            number=trial.number,
            state=trial.state,
            value=None,
            values=values,
            datetime_start=trial.datetime_start,
            datetime_complete=trial.datetime_complete,
            params={p.param_name: parsed[p.param_name].to_external_repr(p.param_value) for p in params},
            distributions=parsed,
            user_attrs={attr.key: json.loads(attr.value_json) for attr in trial.user_attributes},
            system_attrs={attr.key: json.loads(attr.value_json) for attr in trial.system_attributes},
            intermediate_values={
                row.step: models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                    row.intermediate_value, row.intermediate_value_type
                )
                for row in trial.intermediate_values
            },
            trial_id=trial.trial_id,
        )

    def _finish(
        self, trial_id: int, pending: _Pending, state: TrialState, values: Sequence[float] | None
    ) -> FrozenTrial:
        """The pending writes and the final state, in one transaction; returns the trial as stored.
        Raises ``UpdateFinishedTrialError`` when the trial was finished elsewhere (failed for missed
        heartbeats)."""
        final = _copy(pending.trial)
        final.state, final.values = state, None if values is None else [float(v) for v in values]
        final.datetime_complete = datetime.datetime.now() if state.is_finished() else None
        if self._postgres:
            parameters = postgres.finish_parameters(
                trial_id, state, _utc(final.datetime_complete), _rows(pending, values)
            )
            with self._autocommit() as connection:
                if connection.execute(postgres.finish_trial(), parameters).scalar_one() != 1:
                    raise UpdateFinishedTrialError(f"trial {trial_id} was finished by another process")
            return final
        trials = models.TrialModel.__table__
        session = self.scoped_session()
        try:
            finished = session.execute(
                sqlalchemy.update(trials)
                .where(trials.c.trial_id == trial_id, trials.c.state == TrialState.RUNNING)
                .values(state=state, datetime_complete=_utc(final.datetime_complete))
            )
            if finished.rowcount != 1:
                raise UpdateFinishedTrialError(f"trial {trial_id} was finished by another process")
            _insert_rows(session, trial_id, pending, values)
            session.commit()
        except Exception:
            session.rollback()
            raise
        finally:
            session.close()
        return final


class _OneRead(threading.local):
    """``BatchedRDBStorage.one_read``'s answers, per thread: for each study read in the block, what
    its first read asked for (the trials named, and every trial after an id) and returned; None
    outside a block."""

    answers: dict[int, tuple[set[int], int, list[FrozenTrial]]] | None = None

    def trials(
        self, study_id: int, states: Container[TrialState] | None, included: set[int], newer_than: int
    ) -> list[FrozenTrial] | None:
        """What a read of the study would return now, from the block's first read; None without one,
        or when this read asks for a trial that one did not. Optuna's cached storage asks for the
        trials that may have changed since its last read: those that read returned unfinished, and
        any after the last it returned finished, all within what that read asked for."""
        first = None if self.answers is None else self.answers.get(study_id)
        if first is None:
            return None
        asked, asked_newer_than, returned = first
        known = asked | {t._trial_id for t in returned}
        if newer_than < asked_newer_than or any(i <= asked_newer_than and i not in known for i in included):
            return None
        return [
            _copy(t)
            for t in returned
            if (t._trial_id in included or t._trial_id > newer_than) and (states is None or t.state in states)
        ]

    def keep(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included: set[int],
        newer_than: int,
        trials: list[FrozenTrial],
    ) -> None:
        """Keep a study's first read in the block (a read of every state: a filtered one answers for
        fewer trials than it asked about)."""
        if self.answers is not None and states is None and study_id not in self.answers:
            self.answers[study_id] = (set(included), newer_than, [_copy(t) for t in trials])

    def forget(self) -> None:
        """This process wrote: the block's later reads go to the database."""
        if self.answers:
            self.answers = {}


def _one_of(column: sqlalchemy.Column[Any], name: str, on_postgres: bool) -> sqlalchemy.ColumnElement[bool]:
    """``column`` in the list bound as ``name``. On PostgreSQL an array: one statement text whatever
    the count, which the server prepares once."""
    if on_postgres:
        return column == sqlalchemy.any_(sqlalchemy.bindparam(name, type_=postgresql.ARRAY(sqlalchemy.Integer)))
    return column.in_(sqlalchemy.bindparam(name, expanding=True))


# The kinds of row ``_trial_rows`` returns: a trial's own row, then one per row of each of its tables.
_TRIAL, _PARAM, _USER_ATTR, _SYSTEM_ATTR, _INTERMEDIATE, _VALUE = range(6)


@functools.cache
def _trial_rows(on_postgres: bool) -> sqlalchemy.CompoundSelect:
    """Every row of trials ``ids`` in one statement (one snapshot of the database): a UNION ALL of
    Optuna's trial table and its five per-trial tables, each row as (kind, trial id, row id, name,
    step, number, text, label, start, complete)."""
    trials = models.TrialModel.__table__
    number_type = models.TrialParamModel.__table__.c.param_value.type
    text_type, name_type = sqlalchemy.Text(), sqlalchemy.String()

    def null(type_: Any) -> sqlalchemy.ColumnElement[Any]:
        return sqlalchemy.cast(sqlalchemy.null(), type_)

    def part(kind: int, table: sqlalchemy.Table, row_id: str, **columns: Any) -> sqlalchemy.Select[Any]:
        filled = {
            "name": null(name_type), "step": null(sqlalchemy.Integer()), "number": null(number_type),
            "text": null(text_type), "label": null(name_type),
            "start": null(trials.c.datetime_start.type), "complete": null(trials.c.datetime_complete.type),
        } | columns  # fmt: skip
        return sqlalchemy.select(
            sqlalchemy.literal_column(str(kind), sqlalchemy.Integer()).label("kind"),  # inline: no parameter
            table.c.trial_id,
            table.c[row_id].label("row_id"),
            *(column.label(label) for label, column in filled.items()),
        ).where(_one_of(table.c.trial_id, "ids", on_postgres))

    def attributes(kind: int, model: type[Any], row_id: str) -> sqlalchemy.Select[Any]:
        table = model.__table__
        return part(kind, table, row_id, name=sqlalchemy.cast(table.c.key, name_type), text=table.c.value_json)

    params = models.TrialParamModel.__table__
    intermediate = models.TrialIntermediateValueModel.__table__
    values = models.TrialValueModel.__table__
    return sqlalchemy.union_all(
        # Enums as their names, which both databases store (PostgreSQL as a type of its own).
        part(_TRIAL, trials, "trial_id", step=trials.c.number, label=sqlalchemy.cast(trials.c.state, name_type),
             start=trials.c.datetime_start, complete=trials.c.datetime_complete),
        part(_PARAM, params, "param_id", name=sqlalchemy.cast(params.c.param_name, name_type),
             number=params.c.param_value, text=params.c.distribution_json),
        attributes(_USER_ATTR, models.TrialUserAttributeModel, "trial_user_attribute_id"),
        attributes(_SYSTEM_ATTR, models.TrialSystemAttributeModel, "trial_system_attribute_id"),
        part(_INTERMEDIATE, intermediate, "trial_intermediate_value_id", step=intermediate.c.step,
             number=intermediate.c.intermediate_value,
             label=sqlalchemy.cast(intermediate.c.intermediate_value_type, name_type)),
        part(_VALUE, values, "trial_value_id", step=values.c.objective, number=values.c.value,
             label=sqlalchemy.cast(values.c.value_type, name_type)),
    )  # fmt: skip


class _Built:
    """One trial's rows from ``_trial_rows``, made into the ``FrozenTrial`` Optuna builds from them
    (``BatchedRDBStorage._build_frozen_trial_from_trial_model``, which is Optuna's conversion)."""

    def __init__(self, row: Any) -> None:
        self.row = row
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, distributions.BaseDistribution] = {}
        self.user_attrs: dict[str, Any] = {}
        self.system_attrs: dict[str, Any] = {}
        self.intermediate_values: dict[int, float] = {}
        self.values: dict[int, float] = {}

    def add(self, row: Any) -> None:
        if row.kind == _PARAM:
            distribution = self.distributions[row.name] = _distribution(row.text)
            self.params[row.name] = distribution.to_external_repr(row.number)
        elif row.kind == _USER_ATTR:
            self.user_attrs[row.name] = json.loads(row.text)
        elif row.kind == _SYSTEM_ATTR:
            self.system_attrs[row.name] = json.loads(row.text)
        elif row.kind == _INTERMEDIATE:
            kind = models.TrialIntermediateValueModel.TrialIntermediateValueType[row.label]
            self.intermediate_values[row.step] = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                row.number, kind
            )
        else:
            kind = models.TrialValueModel.TrialValueType[row.label]
            self.values[row.step] = models.TrialValueModel.stored_repr_to_value(row.number, kind)

    def frozen(self) -> FrozenTrial:
        row = self.row
        return FrozenTrial(
            number=row.step,
            state=TrialState[row.label],
            value=None,
            values=[self.values[objective] for objective in range(len(self.values))] if self.values else None,
            datetime_start=_local(row.start),
            datetime_complete=_local(row.complete),
            params=self.params,
            distributions=self.distributions,
            user_attrs=self.user_attrs,
            system_attrs=self.system_attrs,
            intermediate_values=self.intermediate_values,
            trial_id=row.trial_id,
        )


@functools.cache
def _changed_trials(on_postgres: bool, with_states: bool) -> sqlalchemy.Select[tuple[Any, Any]]:
    """The study's row, outer-joined to the trials that Optuna's cached storage asks about (those
    in ``included`` and those after ``newer_than``): one row of NULLs when there are none, no row
    when the study does not exist. Built once: building a query costs more than running it."""
    studies, trials = models.StudyModel.__table__, models.TrialModel.__table__
    asked = _one_of(trials.c.trial_id, "included", on_postgres)
    joined = [
        trials.c.study_id == studies.c.study_id,
        sqlalchemy.or_(asked, trials.c.trial_id > sqlalchemy.bindparam("newer_than")),
    ]
    if with_states:
        joined.append(trials.c.state.in_(sqlalchemy.bindparam("states", expanding=True)))
    return (
        sqlalchemy.select(trials.c.trial_id, trials.c.state)
        .select_from(studies.outerjoin(trials, sqlalchemy.and_(*joined)))
        .where(studies.c.study_id == sqlalchemy.bindparam("study"))
    )


def _rows(pending: _Pending, values: Sequence[float] | None) -> dict[str, list[dict[str, Any]]]:
    """A pending trial's parameters, attributes, intermediate values and values, as rows of Optuna's
    tables (without the trial's id)."""
    return {
        "params": [
            {"param_name": name, "param_value": value, "distribution_json": _distribution_json(d)}
            for name, (value, d) in pending.params.items()
        ],
        "user_attrs": [{"key": key, "value_json": json.dumps(value)} for key, value in pending.user_attrs.items()],
        "system_attrs": [{"key": key, "value_json": json.dumps(value)} for key, value in pending.system_attrs.items()],
        "intermediate_values": [
            {"step": step, **_stored(models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value),
                                     "intermediate_value", "intermediate_value_type")}
            for step, value in pending.intermediate_values.items()
        ],
        "values": [
            {"objective": objective,
             **_stored(models.TrialValueModel.value_to_stored_repr(value), "value", "value_type")}
            for objective, value in enumerate(values or ())
        ],
    }  # fmt: skip


def _insert_rows(session: Any, trial_id: int, pending: _Pending, values: Sequence[float] | None) -> None:
    """A pending trial's rows, inserted; those whose key the stored trial already has replace its rows."""
    stored, rows = pending.stored, _rows(pending, values)
    _replace(session, models.TrialParamModel, trial_id, "param_name", stored.params, rows["params"])
    _replace(session, models.TrialUserAttributeModel, trial_id, "key", stored.user_attrs, rows["user_attrs"])
    _replace(session, models.TrialSystemAttributeModel, trial_id, "key", stored.system_attrs, rows["system_attrs"])
    _replace(
        session,
        models.TrialIntermediateValueModel,
        trial_id,
        "step",
        stored.intermediate_values,
        rows["intermediate_values"],
    )
    _replace(session, models.TrialValueModel, trial_id, "objective", (), rows["values"])


def _replace(
    session: Any, model: type[Any], trial_id: int, key: str, existing: Container[Any], rows: Iterable[dict[str, Any]]
) -> None:
    """Insert ``rows`` of one trial into ``model``'s table; those whose ``key`` is in ``existing`` (a
    popped baseline's or a retried trial's attributes) replace the stored row."""
    rows = [row | {"trial_id": trial_id} for row in rows]
    replaced = [row[key] for row in rows if row[key] in existing]
    if replaced:
        session.execute(sqlalchemy.delete(model).where(model.trial_id == trial_id, getattr(model, key).in_(replaced)))
    if rows:
        session.execute(sqlalchemy.insert(model.__table__), rows)  # Core executemany: no ORM objects


@functools.lru_cache(maxsize=4096)
def _distribution(distribution_json: str) -> distributions.BaseDistribution:
    """Distributions are immutable, and a study has a few of them, stored once per parameter row."""
    return distributions.json_to_distribution(distribution_json)


@functools.lru_cache(maxsize=4096)
def _distribution_json(distribution: distributions.BaseDistribution) -> str:
    """The other way: a trial writes a hundred parameters of a few distributions (looking one up
    costs a third of encoding it)."""
    return distributions.distribution_to_json(distribution)


def _utc(local: datetime.datetime | None) -> datetime.datetime | None:
    """A naive local time as Optuna's trial table keeps it: naive UTC (``models.TrialModel``'s setters)."""
    return None if local is None else local.astimezone(datetime.UTC).replace(tzinfo=None)


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """Back: naive UTC from the trial table as the naive local time Optuna's ``FrozenTrial`` holds."""
    return None if utc is None else utc.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)


def _stored(stored: tuple[float | None, Any], value_column: str, type_column: str) -> dict[str, Any]:
    """A value as Optuna's table keeps it: a float (or NULL) and its kind (finite, ±inf, NaN)."""
    value, kind = stored
    return {value_column: value, type_column: kind}


def _running_trial(trial_id: int, number: int, started: datetime.datetime) -> FrozenTrial:
    """A running trial with nothing written yet."""
    return FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=started,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=trial_id,
    )


def _copy(trial: FrozenTrial) -> FrozenTrial:
    """A copy whose dictionaries are its own (values are JSON, never changed in place): a deep copy
    of a trial with a hundred parameters costs milliseconds, this a few microseconds."""
    return FrozenTrial(
        number=trial.number,
        state=trial.state,
        value=None,
        values=None if trial.values is None else list(trial.values),
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=dict(trial.params),
        distributions=dict(trial.distributions),
        user_attrs=dict(trial.user_attrs),
        system_attrs=dict(trial.system_attrs),
        intermediate_values=dict(trial.intermediate_values),
        trial_id=trial._trial_id,
    )


def _json_copy(value: Any) -> Any:
    """What the database would give back: a JSON round trip (tuples become lists, a later change to
    the caller's object is not seen), which also rejects what cannot be stored at the call, not at the commit."""
    return json.loads(json.dumps(value))


class _WalConnection(sqlite3.Connection):
    """In SQLite's default rollback journal each commit is an fsync and blocks readers. WAL lets the
    workers of a job read while one writes, and synchronous=NORMAL (still crash-safe in WAL mode)
    drops the per-commit fsync."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode=WAL")
        self.execute("PRAGMA synchronous=NORMAL")
