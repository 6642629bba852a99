"""The batched storage writes what plain RDB storage writes, in one transaction when a trial ends
(on SQLite and on PostgreSQL, whose statements differ); the lookahead loop proposes the next trial
while the current one scores, reproducibly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import create_engine, event, text

from search.candidates import prepare
from search.evo import CLAIM_ATTR
from search.loading import LoadedModel
from search.study import run_search
from search.trials import SearchHooks, named_proxy, open_study, search_trials
from studystore import make_storage
from studystore.storage import IMMEDIATE_SYSTEM_ATTRS
from tests.conftest import tiny_job_spec

STORAGES = ("sqlite", "postgresql")


@pytest.fixture(params=STORAGES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind the storage supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/optuna.sqlite3"
    factory: Callable[[], str] = request.getfixturevalue("postgres_database_factory")
    return factory()


def _trial_rows(trial: optuna.trial.FrozenTrial) -> tuple[object, ...]:
    return (
        trial.number,
        trial.state,
        trial.values,
        trial.params,
        trial.distributions,
        trial.user_attrs,
        trial.system_attrs,
        trial.intermediate_values,
    )


def test_a_running_trials_writes_reach_the_database_when_it_ends(url: str) -> None:
    study = optuna.create_study(study_name="s", storage=make_storage(url))
    study.enqueue_trial({"x": 0.25}, user_attrs={"origin": "seed"})
    plain = RDBStorage(url)  # another process's view: Optuna's own storage on the same database

    trial = study.ask()  # the enqueued trial, popped: its attributes are in the database already
    trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_int("n", 1, 8)
    trial.set_user_attr("origin", "seed, rescored")
    trial.set_user_attr("arch", {"layers": [1, 2]})
    trial.report(0.5, step=1)
    trial.set_constraint("budget", -0.1)
    running = plain.get_trial(trial._trial_id)
    assert running.state == TrialState.RUNNING and running.params == {} and running.intermediate_values == {}
    assert trial.params["x"] == 0.25 and trial.user_attrs["arch"] == {"layers": [1, 2]}  # read back from memory

    study.tell(trial, 0.75)
    stored = plain.get_trial(trial._trial_id)
    assert stored.params == {"x": 0.25, "n": trial.params["n"]} and stored.values == [0.75]
    assert stored.user_attrs == {"origin": "seed, rescored", "arch": {"layers": [1, 2]}}
    assert stored.intermediate_values == {1: 0.5} and stored.system_attrs["constraints:budget"] == -0.1
    assert _trial_rows(stored) == _trial_rows(study.trials[0])  # this process reads what the database has
    assert _trial_rows(optuna.load_study(study_name="s", storage=url).trials[0]) == _trial_rows(stored)


def test_the_evo_samplers_claims_are_written_at_once() -> None:
    assert CLAIM_ATTR.startswith(IMMEDIATE_SYSTEM_ATTRS)


def test_a_trial_failed_by_another_process_is_not_written_over(url: str) -> None:
    """A worker that missed its heartbeats finds its trial failed (and retried elsewhere): its late
    result is refused, as Optuna refuses it, and none of its buffered writes land."""
    study = optuna.create_study(study_name="s", storage=make_storage(url))
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    plain = RDBStorage(url)
    assert plain.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    with pytest.raises(UpdateFinishedTrialError):
        study.tell(trial, 1.0)
    stored = plain.get_trial(trial._trial_id)
    assert stored.state == TrialState.FAIL and stored.params == {} and stored.values is None


def test_a_trial_of_this_process_failed_elsewhere_is_read_as_stored(url: str) -> None:
    """A read of the study leaves out the rows of the trials this process holds in memory; one that
    another process failed meanwhile (missed heartbeats) is read again, as stored."""
    study = optuna.create_study(study_name="s", storage=make_storage(url))
    study.tell(study.ask(), 1.0)  # finished here, held until a read takes it
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    plain = RDBStorage(url)
    plain.set_trial_system_attr(trial._trial_id, "failed_by", "reaper")
    assert plain.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    expected = optuna.load_study(study_name="s", storage=plain).get_trials(deepcopy=False)
    assert study.get_trials(deepcopy=False) == expected
    assert expected[1].state == TrialState.FAIL and expected[1].params == {}
    assert expected[1].system_attrs == {"failed_by": "reaper"}


def test_a_claim_is_seen_at_once_and_refused_once_the_trial_has_finished(url: str) -> None:
    study = optuna.create_study(study_name="s", storage=make_storage(url))
    trial = study.ask()
    plain = RDBStorage(url)
    study._storage.set_trial_system_attr(trial._trial_id, CLAIM_ATTR, "candidate-1")
    study._storage.set_trial_system_attr(trial._trial_id, CLAIM_ATTR, "candidate-2")  # a redraw replaces it
    assert plain.get_trial(trial._trial_id).system_attrs == {CLAIM_ATTR: "candidate-2"}

    assert plain.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    with pytest.raises(UpdateFinishedTrialError):
        study._storage.set_trial_system_attr(trial._trial_id, CLAIM_ATTR, "candidate-3")
    assert plain.get_trial(trial._trial_id).system_attrs == {CLAIM_ATTR: "candidate-2"}


def test_workers_creating_trials_at_once_number_them_as_optuna_does(url: str) -> None:
    """Each worker its own storage (its own connections): numbers are the creation order, no gaps,
    no repeats, as Optuna's own creation (under the study's lock) gives them."""
    optuna.create_study(study_name="s", storage=make_storage(url))
    created: list[tuple[int, int]] = []

    def worker() -> None:
        study = optuna.load_study(study_name="s", storage=make_storage(url))
        for _ in range(8):
            trial = study.ask()
            created.append((trial._trial_id, trial.number))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [number for _, number in sorted(created)] == list(range(32))
    stored = RDBStorage(url).get_all_trials(RDBStorage(url).get_study_id_from_name("s"))
    assert sorted((t._trial_id, t.number) for t in stored) == sorted(created)


def test_a_worker_reads_the_other_workers_trials_as_optuna_does(url: str) -> None:
    """The others' trials that changed since the last read are loaded, and only those: what the
    study reads is what Optuna's own storage reads, in order, whichever worker wrote it."""
    ours = optuna.create_study(study_name="s", storage=make_storage(url))
    theirs = optuna.load_study(study_name="s", storage=make_storage(url))
    slow = theirs.ask()  # running while later trials finish
    ours.tell(ours.ask(), 0.0)
    for value in (1.0, 2.0):
        trial = theirs.ask()
        trial.suggest_float("x", 0.0, 1.0)
        theirs.tell(trial, value)
    theirs.tell(slow, 3.0)
    ours.ask()  # a read: the slow trial finished, two are new, one is ours and running

    expected = [_trial_rows(t) for t in optuna.load_study(study_name="s", storage=url).trials]
    assert [_trial_rows(t) for t in ours.get_trials(deepcopy=False)] == expected


def test_a_trial_running_in_another_worker_is_read_as_stored_and_in_full_once_it_ends(url: str) -> None:
    """What another worker's running trial has stored (its row and immediate system attributes, an
    enqueued trial's fixed parameters among them) is read in one query, and equals what Optuna's own
    storage reads; once it ends, its parameters and values are read too."""
    ours = optuna.create_study(study_name="s", storage=make_storage(url))
    theirs = optuna.load_study(study_name="s", storage=make_storage(url))
    theirs.enqueue_trial({"x": 0.25})
    running = theirs.ask()
    running.suggest_float("x", 0.0, 1.0)
    theirs._storage.set_trial_system_attr(running._trial_id, f"{IMMEDIATE_SYSTEM_ATTRS[0]}:abc", [1, 2])
    plain = optuna.load_study(study_name="s", storage=RDBStorage(url))
    seen = ours.get_trials(deepcopy=False)
    assert [_trial_rows(t) for t in seen] == [_trial_rows(t) for t in plain.get_trials(deepcopy=False)]
    assert seen[0].state == TrialState.RUNNING and seen[0].params == {}  # batched in the other worker
    assert seen[0].system_attrs[f"{IMMEDIATE_SYSTEM_ATTRS[0]}:abc"] == [1, 2]
    theirs.tell(running, 1.0)
    (finished,) = ours.get_trials(deepcopy=False)
    assert (finished.state, finished.params, finished.value) == (TrialState.COMPLETE, {"x": 0.25}, 1.0)


def test_another_processs_trials_are_built_exactly_as_optuna_builds_them(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials this process does not hold are loaded in one query of all their rows: every field of
    every trial (times in local time, infinite values, each kind of distribution, attributes in
    order) equals what Optuna's own storage reads, for finished, failed, running and waiting trials."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # naive UTC in the table, local time in a FrozenTrial
    time.tzset()
    try:
        theirs = optuna.create_study(study_name="s", storage=RDBStorage(url), directions=["maximize", "minimize"])
        for number in range(3):
            trial = theirs.ask()
            trial.suggest_float("x", 1e-3, 1.0, log=True)
            trial.suggest_int("n", 1, 8, step=1)
            trial.suggest_categorical("c", ["a", None, 2.5])
            trial.set_user_attr("arch", {"layers": [number, 2]})
            trial.set_user_attr("origin", "sampler")
            trial.storage.set_trial_system_attr(trial._trial_id, "constraints", [-0.1, float(number)])
            trial.storage.set_trial_intermediate_value(trial._trial_id, 1, float("-inf") if number else 0.5)
            trial.storage.set_trial_intermediate_value(trial._trial_id, 4, float("inf"))
            theirs.tell(
                trial,
                [float(number), float("inf")] if number < 2 else None,
                state=None if number < 2 else TrialState.FAIL,
            )
        theirs.ask().suggest_float("x", 1e-3, 1.0, log=True)  # running, with a parameter (Optuna writes it at once)
        theirs.enqueue_trial({"x": 0.25}, user_attrs={"origin": "seed"})  # waiting

        ours = optuna.load_study(study_name="s", storage=make_storage(url)).get_trials(deepcopy=False)
        expected = optuna.load_study(study_name="s", storage=RDBStorage(url)).get_trials(deepcopy=False)
        assert [t.state for t in ours] == [TrialState.COMPLETE] * 2 + [
            TrialState.FAIL,
            TrialState.RUNNING,
            TrialState.WAITING,
        ]
        assert ours == expected  # FrozenTrial compares every field
        assert [list(t.params) for t in ours] == [list(t.params) for t in expected]  # and in Optuna's order
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_study_deleted_elsewhere_is_reported_as_optuna_reports_it(url: str) -> None:
    study = optuna.create_study(study_name="s", storage=make_storage(url))
    study.ask()
    assert len(study.get_trials(deepcopy=False)) == 1
    optuna.delete_study(study_name="s", storage=url)
    with pytest.raises(KeyError):
        study.get_trials(deepcopy=False)


def test_trial_times_are_stored_in_utc_as_optuna_stores_them(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna keeps naive UTC in its table and gives back local time: a storage that wrote local
    time would read back hours off anywhere but UTC."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30, no daylight saving
    time.tzset()
    try:
        study = optuna.create_study(study_name="s", storage=make_storage(url))
        study.enqueue_trial({"x": 0.5})
        for _ in range(2):  # the popped baseline, then a trial created here
            trial = study.ask()
            trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, 1.0)
        ours = study.trials
        theirs = optuna.load_study(study_name="s", storage=url).trials
        for mine, stored in zip(ours, theirs, strict=True):
            assert abs((stored.datetime_start - mine.datetime_start).total_seconds()) < 2
            assert abs((stored.datetime_complete - mine.datetime_complete).total_seconds()) < 2
            assert stored.datetime_start <= stored.datetime_complete
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_running_trials_buffered_write_ends_the_blocks_answers(url: str) -> None:
    """The loop's block spans the trial's first suggest (the sampler reads there): a write kept in
    memory, as a running trial's parameters are, is a write too, so the next read shows it."""
    storage = make_storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    with storage.one_read():
        trial = study.ask()
        assert study.get_trials(deepcopy=False)[0].params == {}
        x = trial.suggest_float("x", 0.0, 1.0)
        assert study.get_trials(deepcopy=False)[0].params == {"x": x}
        trial.set_user_attr("arch", [1])
        assert study.get_trials(deepcopy=False)[0].user_attrs == {"arch": [1]}


def test_connections_the_server_dropped_are_replaced(postgres_database_factory: Callable[[], str]) -> None:
    """What a PostgreSQL restart does to the pool: every connection is terminated while idle. The
    storage pings no connection at checkout, but sees a terminated one and replaces it."""
    url = postgres_database_factory()
    study = optuna.create_study(study_name="s", storage=make_storage(url))
    study.tell(study.ask(), 1.0)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            terminated = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert terminated >= 1
        study.tell(study.ask(), 2.0)  # reads, creates and finishes on fresh connections
        assert [t.value for t in study.trials] == [1.0, 2.0]
    finally:
        admin.dispose()


# Looking ahead by a thread (an eagerly scored proxy), or launched rounds (a replaying one: the next
# round is proposed and started on the device before the current one is told).
AHEAD = [pytest.param(True, "gather", id="thread"), pytest.param(False, "replay", id="launched")]


@pytest.mark.parametrize(("lookahead", "execution"), AHEAD)
def test_lookahead_runs_the_same_search_on_every_run(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path, lookahead: bool, execution: str
) -> None:
    spec = tiny_job_spec(tiny_llama_dir, n_trials=6, seed=5, verify_top_k=0, sampler="tpe")
    context = prepare(tiny_loaded, spec)
    proxy = named_proxy(context, "tracenas", execution=execution)
    runs = []
    for run in range(2):
        study = open_study(context, study_name=f"ahead-{run}", storage=make_storage(f"sqlite:///{tmp_path}/{run}.db"))
        assert search_trials(context, proxy, study, lookahead=lookahead) is False
        runs.append(study.trials)
    first, second = runs
    assert [t.state for t in first] == [TrialState.COMPLETE] * 6  # nothing asked beyond n_trials
    assert [t.params for t in first] == [t.params for t in second]
    assert [t.values for t in first] == [t.values for t in second]


@pytest.mark.parametrize(("lookahead", "execution"), AHEAD)
def test_a_stopped_lookahead_search_fails_the_trial_it_proposed_and_resumes(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path, lookahead: bool, execution: str
) -> None:
    spec = tiny_job_spec(tiny_llama_dir, n_trials=6, seed=5, verify_top_k=0)
    context = prepare(tiny_loaded, spec)
    storage = make_storage(f"sqlite:///{tmp_path}/optuna.sqlite3")
    study = open_study(context, study_name="stopped", storage=storage)
    finished: list[int] = []
    hooks = SearchHooks(on_trial=[lambda _s, t: finished.append(t.number)], should_stop=lambda: len(finished) >= 3)

    proxy = named_proxy(context, "tracenas", execution=execution)
    assert search_trials(context, proxy, study, hooks=hooks, lookahead=lookahead) is True
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    assert study.trials[3].user_attrs["error"] == "not scored: the search stopped before its turn"

    result = run_search(context, study_name="stopped", storage=storage)  # a resume completes the study
    assert sum(t.state == "complete" for t in result.trials) == 6


def test_a_launched_round_runs_while_the_one_before_is_told() -> None:
    """With an objective that starts its rounds on the device (``LaunchingObjective``), the next round
    is proposed while the current one runs and launched before the current one is told; proposals
    never see the round still running, and the study ends with exactly the trials it asked for."""
    from search.loop import run_trials

    events: list[tuple[str, list[int]]] = []

    class Launching:
        def propose(self, trial: optuna.Trial) -> float:
            told = [t.number for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
            events.append(("propose", [trial.number, *told]))
            return trial.suggest_float("x", 0, 1)

        def score(self, trial: optuna.Trial, proposal: float) -> float:
            raise AssertionError("a launching objective's rounds are launched")

        def launch(self, trials: list[optuna.Trial], proposals: list[float]) -> Callable[[], list[float]]:
            events.append(("launch", [t.number for t in trials]))
            return lambda: [x**2 for x in proposals]

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    told = lambda _study, trial: events.append(("told", [trial.number]))  # noqa: E731
    assert run_trials(study, Launching(), max_trials=10, complete_target=5, batch=2, callbacks=[told]) is False

    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    assert all(t.value == pytest.approx(t.params["x"] ** 2) for t in study.trials)
    launches = [numbers for kind, numbers in events if kind == "launch"]
    assert launches == [[0, 1], [2, 3], [4]]
    for numbers in launches[1:]:  # launched before the round before it was told
        assert events.index(("launch", numbers)) < events.index(("told", [numbers[0] - 1]))
    # Trial 4 is proposed after round [0, 1] is told and while [2, 3] runs: it sees the first, not the second.
    assert ("propose", [4, 0, 1]) in events


def test_reads_made_at_once_are_one_query_until_this_process_writes(url: str) -> None:
    """The loop counts the complete trials, then ``ask`` looks for waiting ones: inside ``one_read``
    the second read is answered by the first, a write of this process sends the next read to the
    database, and another process's trial written meanwhile is seen by that read."""
    storage = make_storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    theirs = optuna.load_study(study_name="s", storage=make_storage(url))
    study.tell(study.ask(), 0.0)
    reads: list[str] = []

    @event.listens_for(storage.engine, "before_cursor_execute")
    def _count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.startswith("SELECT trials.trial_id, trials.state"):  # a read of the study's changed trials
            reads.append(statement)

    with storage.one_read():
        assert len(study.get_trials(deepcopy=False)) == 1
        theirs.tell(theirs.ask(), 1.0)
        assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 1  # the first read's answer
        assert len(reads) == 1
        study.ask()  # looks for waiting trials in the first read's answer, then creates one: a write
        assert [t.state for t in study.get_trials(deepcopy=False)] == [
            TrialState.COMPLETE,
            TrialState.COMPLETE,
            TrialState.RUNNING,
        ]
    assert len(reads) == 2
    assert len(study.get_trials(deepcopy=False)) == 3  # outside the block every read is made
    assert len(reads) == 3


@pytest.mark.parametrize("lookahead", [False, True])
def test_trials_scored_in_rounds_complete_the_study_each_with_its_own_score(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path, lookahead: bool
) -> None:
    """``batch=3``: trials are asked and proposed three at a time and TraceNAS replays each round in one
    pass. The study ends with exactly ``n_trials`` complete trials (the last round is smaller), every
    trial reaches the callbacks once, and each trial's value is what its candidate scores alone."""
    from search.arch import ArchConfig

    spec = tiny_job_spec(tiny_llama_dir, n_trials=7, seed=5, verify_top_k=0)
    context = prepare(tiny_loaded, spec)
    proxy = named_proxy(context, "tracenas", execution="replay")
    study = open_study(context, study_name="rounds", storage=make_storage(f"sqlite:///{tmp_path}/optuna.sqlite3"))
    finished: list[int] = []
    hooks = SearchHooks(on_trial=[lambda _s, t: finished.append(t.number)])

    assert search_trials(context, proxy, study, hooks=hooks, lookahead=lookahead, batch=3) is False
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 7
    assert sorted(finished) == list(range(7))
    alone = named_proxy(context, "tracenas", execution="gather")
    for trial in study.trials:
        selection = context.selection(ArchConfig.from_dict(trial.user_attrs["arch"]))
        assert trial.value == pytest.approx(alone.score(selection).value, abs=1e-5)


def test_a_batch_needs_an_objective_that_scores_several(tmp_path: Path) -> None:
    from search.loop import run_trials

    class One:
        def propose(self, trial: optuna.Trial) -> float:
            return trial.suggest_float("x", 0, 1)

        def score(self, trial: optuna.Trial, proposal: float) -> float:
            return proposal

    study = optuna.create_study()
    with pytest.raises(ValueError, match="scores several"):
        run_trials(study, One(), max_trials=4, complete_target=4, batch=2)
    with pytest.raises(ValueError, match="at least 1"):
        run_trials(study, One(), max_trials=4, complete_target=4, batch=0)
    assert run_trials(study, One(), max_trials=4, complete_target=4) is False and len(study.trials) == 4
