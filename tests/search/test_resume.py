"""``search.resume.resumed_spec``: the n_trials rule the service's resume and ``prunesearch search
--study-name`` share."""

from __future__ import annotations

import pytest

from search.errors import InvalidJobSpec
from search.resume import resumed_spec
from search.spec import MAX_TRIALS_HARD_LIMIT, JobSpec


def _spec() -> JobSpec:
    return JobSpec(model="models/ref-llama-7m", target={"param_ratio": 0.6}, n_trials=10, seed=3)


def test_a_new_n_trials_is_stored_in_a_new_spec_and_the_rest_is_kept() -> None:
    spec = _spec()
    resumed = resumed_spec(spec, complete=10, n_trials=14)
    assert resumed.n_trials == 14 and spec.n_trials == 10  # JobSpec is frozen: a new one
    assert resumed.model_dump() == spec.model_dump() | {"n_trials": 14}
    assert resumed_spec(spec, complete=12) is spec  # no new n_trials: the job's own, even when reached
    assert resumed_spec(spec, complete=4, n_trials=4).n_trials == 4


def test_fewer_trials_than_the_study_completed_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidJobSpec, match="below the 7 complete trials") as refused:
        resumed_spec(_spec(), complete=7, n_trials=6)
    assert refused.value.field == "n_trials"
    with pytest.raises(ValueError):  # pydantic's bound on the field holds for a resume too
        resumed_spec(_spec(), complete=0, n_trials=MAX_TRIALS_HARD_LIMIT + 1)
