"""``search.resume.resumed_spec``: the n_trials rule the service's resume and ``prunesearch search
--study-name`` share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.candidates import prepare
from search.errors import InvalidJobSpec
from search.loading import LoadedModel
from search.resume import resumed_spec
from search.spec import MAX_TRIALS_HARD_LIMIT, JobSpec
from search.trials import open_study
from tests.conftest import tiny_job_spec
from tests.search.test_evo import _closeness, _drive


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


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_study_with_a_seeded_optuna_sampler_draws_new_candidates(
    sampler: str, tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """Optuna's samplers draw one sequence per seed: reopened as at the start, the study would propose
    its first candidates again (evo's per-trial streams are tested in test_evo.py)."""
    spec = tiny_job_spec(tiny_llama_dir, sampler=sampler, seed=7, search_space={"ffn_alignment": 8})
    context = prepare(tiny_loaded, spec)
    fitness, url = _closeness(context), f"sqlite:///{tmp_path}/study.sqlite3"
    _drive(context, open_study(context, study_name="s", storage=url), 6, fitness)
    resumed = open_study(context, study_name="s", storage=url)  # a new process: nothing in memory
    _drive(context, resumed, 6, fitness)
    archs = [json.dumps(t.user_attrs["arch"], sort_keys=True) for t in resumed.get_trials()]
    assert len(archs) == 12 and len(set(archs)) == 12
