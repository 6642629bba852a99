"""The batched storage writes what plain RDB storage writes, in one transaction when a trial ends;
the lookahead loop proposes the next trial while the current one scores, reproducibly."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search.candidates import prepare
from search.evo import CLAIM_ATTR
from search.loading import LoadedModel
from search.study import run_search
from search.trials import SearchHooks, job_proxy, open_study, search_trials
from studystore import make_storage
from studystore.storage import IMMEDIATE_SYSTEM_ATTRS
from tests.conftest import tiny_job_spec


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


def test_a_running_trials_writes_reach_the_database_when_it_ends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/optuna.sqlite3"
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


def test_a_trial_failed_by_another_process_is_not_written_over(tmp_path: Path) -> None:
    """A worker that missed its heartbeats finds its trial failed (and retried elsewhere): its late
    result is refused, as Optuna refuses it, and none of its buffered writes land."""
    url = f"sqlite:///{tmp_path}/optuna.sqlite3"
    study = optuna.create_study(study_name="s", storage=make_storage(url))
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    plain = RDBStorage(url)
    assert plain.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    with pytest.raises(UpdateFinishedTrialError):
        study.tell(trial, 1.0)
    stored = plain.get_trial(trial._trial_id)
    assert stored.state == TrialState.FAIL and stored.params == {} and stored.values is None


def test_lookahead_runs_the_same_search_on_every_run(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    spec = tiny_job_spec(tiny_llama_dir, n_trials=6, seed=5, verify_top_k=0, sampler="tpe")
    context = prepare(tiny_loaded, spec)
    proxy = job_proxy(context)
    runs = []
    for run in range(2):
        study = open_study(context, study_name=f"ahead-{run}", storage=make_storage(f"sqlite:///{tmp_path}/{run}.db"))
        assert search_trials(context, proxy, study, lookahead=True) is False
        runs.append(study.trials)
    first, second = runs
    assert [t.state for t in first] == [TrialState.COMPLETE] * 6  # nothing asked beyond n_trials
    assert [t.params for t in first] == [t.params for t in second]
    assert [t.values for t in first] == [t.values for t in second]


def test_a_stopped_lookahead_search_fails_the_trial_it_proposed_and_resumes(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    spec = tiny_job_spec(tiny_llama_dir, n_trials=6, seed=5, verify_top_k=0)
    context = prepare(tiny_loaded, spec)
    storage = make_storage(f"sqlite:///{tmp_path}/optuna.sqlite3")
    study = open_study(context, study_name="stopped", storage=storage)
    finished: list[int] = []
    hooks = SearchHooks(on_trial=[lambda _s, t: finished.append(t.number)], should_stop=lambda: len(finished) >= 3)

    assert search_trials(context, job_proxy(context), study, hooks=hooks, lookahead=True) is True
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    assert study.trials[3].user_attrs["error"] == "not scored: the search stopped before its turn"

    result = run_search(context, study_name="stopped", storage=storage)  # a resume completes the study
    assert sum(t.state == "complete" for t in result.trials) == 6
