"""The token schedule: rungs from the spec, promotion among the study's trials, lower rungs put on the
full scale, and a tiny search where most trials stop early and the best reaches the top rung."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import create_trial

from search.candidates import SearchContext, prepare
from search.fidelity import full_scale, job_rungs, promoted
from search.loading import LoadedModel
from search.proxies import create_proxy
from search.study import run_search
from tests.conftest import tiny_job_spec

SEQUENCES, SEQ_LEN = 8, 64


@pytest.fixture(scope="module")
def context(tiny_loaded: LoadedModel, tiny_llama_dir: Path) -> SearchContext:
    spec = tiny_job_spec(tiny_llama_dir, calibration={"n_samples": SEQUENCES, "seq_len": SEQ_LEN, "heldout_samples": 4})
    return prepare(tiny_loaded, spec)


def test_rungs_follow_the_spec_within_the_proxys_bounds(context: SearchContext) -> None:
    kl = create_proxy("kl", context.loaded.adapter, context.tokens)
    assert kl.rungs == (1, 2, 4, 8)

    def rungs(**fields: object) -> tuple[int, ...]:
        return job_rungs(kl, context.spec.model_copy(update=fields))

    schedule = context.spec.token_schedule
    assert rungs() == (2, 4, 8)  # a quarter of the sequences first, doubling
    assert rungs(token_schedule=schedule.model_copy(update={"first_sequences": 1, "growth": 3})) == (1, 3, 8)
    assert rungs(token_schedule=schedule.model_copy(update={"first_sequences": 8})) == ()  # one rung: none
    assert rungs(token_schedule=schedule.model_copy(update={"enabled": False})) == ()
    assert rungs(objectives=["score", "params"]) == ()  # Pareto jobs score every trial in full
    assert job_rungs(create_proxy("prunenet", context.loaded.adapter, context.tokens), context.spec) == ()


def test_promotion_takes_the_top_share_of_the_trials_on_a_rung() -> None:
    assert promoted(-1.0, [], 0.5)  # alone on its rung
    assert promoted(-1.0, [-2.0], 0.5) and not promoted(-2.0, [-1.0], 0.5)
    peers = [-1.0, -2.0, -3.0, -4.0, -5.0]  # with itself six trials: the best three go on
    assert promoted(-2.5, peers, 0.5) and not promoted(-3.5, peers, 0.5)
    assert promoted(-4.5, peers, 1.0) and not promoted(-1.5, peers, 0.1)


def test_a_lower_rung_is_scaled_by_the_median_ratio_of_the_top_rung_trials() -> None:
    def trial(values: dict[int, float]) -> optuna.trial.FrozenTrial:
        return create_trial(value=values[max(values)], intermediate_values=values)

    reached = [trial({10: -1.0, 40: -2.0}), trial({10: -2.0, 40: -3.0}), trial({10: -4.0, 40: -12.0})]
    stopped = create_trial(value=-9.0, intermediate_values={10: -3.0})
    value, ratio = full_scale(-3.0, 10, 40, [*reached, stopped, trial({10: 0.0, 40: -0.5})])
    assert ratio == 2.0 and value == -6.0  # median of 2, 1.5, 3; a zero on the rung has no ratio
    assert full_scale(-3.0, 10, 40, [stopped]) == (-3.0, 1.0)  # nothing reached the top yet


def _search(context: SearchContext, name: str, **schedule: object) -> tuple[list, optuna.Study]:
    spec = context.spec.model_copy(
        update={
            "proxy": "kl",
            "n_trials": 14,
            "seed": 2,
            "verify_top_k": 0,
            "audit_size": 0,
            "token_schedule": context.spec.token_schedule.model_copy(update=schedule),
        }
    )
    storage = InMemoryStorage()
    result = run_search(prepare(context.loaded, spec), study_name=name, storage=storage)
    return [t for t in result.trials if t.state == "complete"], optuna.load_study(study_name=name, storage=storage)


def test_a_search_scores_most_trials_on_fewer_tokens(context: SearchContext) -> None:
    every = SEQUENCES * (SEQ_LEN - 1)
    trials, study = _search(context, "schedule", full_trials=4)
    assert len(trials) == 14 and all(t.tokens is not None for t in trials)
    assert all(t.tokens == every for t in trials[:4])  # the seeds and the first trials: every rung
    assert any(t.tokens < every for t in trials)
    assert sum(t.tokens for t in trials) / len(trials) < every
    best = max(trials, key=lambda t: t.value)
    assert best.tokens == every
    for frozen, trial in zip(study.get_trials(states=[optuna.trial.TrialState.COMPLETE]), trials, strict=True):
        steps = list(frozen.intermediate_values)  # the dashboard's curve: one point per rung climbed
        assert steps == [2 * (SEQ_LEN - 1), 4 * (SEQ_LEN - 1), every][: len(steps)] and steps[-1] == trial.tokens
        if trial.tokens < every:  # stopped early: scaled onto the full scale, the ratio recorded
            assert trial.value == frozen.intermediate_values[trial.tokens] * trial.scores["fidelity_ratio"]


def test_without_the_schedule_every_trial_scores_every_token(context: SearchContext) -> None:
    trials, study = _search(context, "off", enabled=False)
    assert [t.tokens for t in trials] == [SEQUENCES * (SEQ_LEN - 1)] * 14
    assert all(not t.intermediate_values for t in study.trials)
