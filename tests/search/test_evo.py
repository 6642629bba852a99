"""The ``evo`` sampler: offspring on the budget in every parameterisation, no candidate twice, the
population read from storage (a resumed study, two workers on one), and a real search with it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from pydantic import ValidationError

from search.arch import ArchConfig
from search.candidates import SearchContext, prepare
from search.coordination import search_chunk
from search.evo import CLAIM_ATTR, EvoSampler, _digest, _write_claim, rescale
from search.loading import LoadedModel
from search.moves import arch_distance
from search.repair import DEFAULT_TOLERANCE
from search.study import run_search
from search.trials import job_sampler, open_study
from studystore import make_storage
from tests.conftest import tiny_job_spec

Fitness = Callable[[ArchConfig], float]

SPACES: dict[str, dict[str, object]] = {
    "per_layer": {"ffn_alignment": 8},
    "per_layer_sparse": {"ffn_alignment": 8, "sparsity": 0.5},
    "compact": {"ffn_alignment": 8, "parameterization": "compact", "sparsity": 0.5},
    "standard": {"ffn_alignment": 8, "export_format": "standard"},
}


def _context(loaded: LoadedModel, model: Path, space: str = "per_layer") -> SearchContext:
    return prepare(loaded, tiny_job_spec(model, sampler="evo", seed=7, search_space=SPACES[space]))


def _closeness(context: SearchContext) -> Fitness:
    """A fitness with one optimum that is no seed: closeness to a random candidate at the budget (a
    proxy without the forward passes)."""
    _, high = context.ratio_range()
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    target = context.arch(context.space.suggest(trial), high)
    return lambda arch: -arch_distance(context.shape, arch, target)


def _drive(
    context: SearchContext,
    study: optuna.Study,
    trials: int,
    fitness: Fitness,
    together: threading.Barrier | None = None,
) -> None:
    """``trials`` trials by hand: sample, repair to the budget, record the candidate, tell its fitness.
    With ``together``, each trial starts when every worker's does (so their samplers race)."""
    _, high = context.ratio_range()
    for _ in range(trials):
        if together is not None:
            together.wait()
        trial = study.ask()
        arch = context.arch(context.space.suggest(trial), high)
        trial.set_user_attr("arch", arch.to_dict())
        study.tell(trial, fitness(arch))


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def _distinct(trials: list[optuna.trial.FrozenTrial]) -> int:
    return len({json.dumps(t.user_attrs["arch"]) for t in trials})


# The tiny model has 22 standard candidates at its budget (and thousands of the others).
@pytest.mark.parametrize(
    ("space", "trials"), [("per_layer", 40), ("per_layer_sparse", 40), ("compact", 40), ("standard", 16)]
)
def test_offspring_stay_on_the_budget_and_never_repeat_a_candidate(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, space: str, trials: int
) -> None:
    context = _context(tiny_loaded, tiny_llama_dir, space)
    study = open_study(context, study_name=space)  # with its enqueued baselines, the first population
    _drive(context, study, trials, _closeness(context))
    budget = context.ratio_range()[1] * context.shape.dense_params()
    complete = _complete(study)
    for trial in complete:
        count = context.shape.count_params(ArchConfig.from_dict(trial.user_attrs["arch"]))
        assert abs(count - budget) <= DEFAULT_TOLERANCE * budget, (space, trial.number)
    assert len(complete) == _distinct(complete) == trials
    claimed = [t for t in complete if t.system_attrs.get(CLAIM_ATTR)]
    seeds = [t for t in complete if not t.system_attrs.get(CLAIM_ATTR)]
    assert len(seeds) == len(context.space.seeds(context.ratio_range()[1])), "every trial but the seeds is evo's"
    assert max(t.values[0] for t in claimed) > max(t.values[0] for t in seeds), "the search improves on its seeds"


def test_a_resumed_study_reads_its_population_from_storage_and_continues_as_it_would_have(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    context = _context(tiny_loaded, tiny_llama_dir)
    fitness = _closeness(context)
    whole = open_study(context, study_name="whole", storage=f"sqlite:///{tmp_path}/whole.sqlite3")
    _drive(context, whole, 18, fitness)
    url = f"sqlite:///{tmp_path}/resumed.sqlite3"
    _drive(context, open_study(context, study_name="resumed", storage=url), 12, fitness)
    # A new process: a new storage connection, study object and sampler, nothing in memory.
    resumed = open_study(context, study_name="resumed", storage=url)
    assert len(resumed.trials) == 12
    _drive(context, resumed, 6, fitness)
    trials = resumed.get_trials()
    assert [t.number for t in trials] == list(range(18)) and len(_complete(resumed)) == 18
    assert [t.params for t in trials] == [t.params for t in whole.get_trials()]
    assert all(t.system_attrs.get(CLAIM_ATTR) for t in trials[12:]), "offspring of the stored population"


# The standard space (22 candidates) makes two offspring drawn at the same moment often the same.
@pytest.mark.parametrize(("space", "each"), [("per_layer", 15), ("standard", 6)])
def test_two_workers_on_one_study_propose_no_candidate_twice(
    tiny_loaded: LoadedModel,
    tiny_llama_dir: Path,
    postgres_database_factory: Callable[[], str],
    space: str,
    each: int,
) -> None:
    """Two workers with the same seed, each with its own storage connection and sampler, sample at
    the same moments; the study holds no candidate twice."""
    url = postgres_database_factory()
    context = _context(tiny_loaded, tiny_llama_dir, space)
    fitness = _closeness(context)
    open_study(context, study_name="pair", storage=url)
    errors: list[BaseException] = []
    together = threading.Barrier(2, timeout=60)

    def worker() -> None:
        try:
            study = optuna.load_study(study_name="pair", storage=url, sampler=job_sampler(context, 7))
            _drive(context, study, each, fitness, together)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    complete = _complete(optuna.load_study(study_name="pair", storage=url))
    assert len(complete) == _distinct(complete) == 2 * each


def test_a_candidate_another_worker_claims_meanwhile_is_drawn_again(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path
) -> None:
    """The race the claim closes, played in order: another worker claims this sampler's first
    offspring after the sampler read the study and before it claimed the offspring itself."""
    context = _context(tiny_loaded, tiny_llama_dir)
    storage = optuna.storages.InMemoryStorage()
    study = open_study(context, study_name="race", storage=storage)
    _drive(context, study, 6, _closeness(context))
    study.ask()  # the other worker's trial, its parameters not sampled yet
    other = study.get_trials(deepcopy=False)[-1]
    known = [t.params for t in _complete(study)]
    _, high = context.ratio_range()
    offspring: list[str] = []

    def candidate_key(params: Mapping[str, Any]) -> str:
        key = context.arch(context.space.proposal(params), high).to_json()
        if params not in known:
            if not offspring:
                _write_claim(study, other, _digest(key))
            offspring.append(key)
        return key

    sampler = EvoSampler(7, shape=context.shape, param_ratio=high, candidate_key=candidate_key)
    trial = optuna.load_study(study_name="race", storage=storage, sampler=sampler).ask()
    arch = context.arch(context.space.suggest(trial), high).to_json()
    assert len(offspring) >= 2 and arch == offspring[-1] != offspring[0]


def test_a_search_with_evo_improves_on_its_seeds(tiny_loaded: LoadedModel, tiny_llama_dir: Path) -> None:
    spec = tiny_job_spec(tiny_llama_dir, n_trials=16, seed=3, verify_top_k=0, sampler="evo")
    result = run_search(prepare(tiny_loaded, spec), study_name="evo")
    complete = [t for t in result.trials if t.state == "complete" and t.value is not None]
    seeds = [t.value for t in complete if t.origin.startswith("seed:")]
    offspring = [t.value for t in complete if not t.origin.startswith("seed:")]
    assert len(complete) == 16 and len(seeds) == 2
    assert len({json.dumps(t.arch) for t in complete}) == 16
    assert all(abs(t.param_ratio - 0.6) <= DEFAULT_TOLERANCE * 0.6 for t in complete)
    assert max(offspring) >= max(seeds)


def test_a_helper_worker_runs_evo_trials_of_a_job(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """``search_chunk`` (another worker's share of a job) builds the job's evo sampler too."""
    context = prepare(tiny_loaded, tiny_job_spec(tiny_llama_dir, n_trials=6, seed=3, sampler="evo"))
    url = f"sqlite:///{tmp_path}/job.sqlite3"
    open_study(context, study_name="job", storage=url)
    assert search_chunk(context, study_name="job", storage=make_storage(url), max_trials=5) == 5
    complete = _complete(optuna.load_study(study_name="job", storage=url))
    assert len(complete) == _distinct(complete) == 5
    assert sum(bool(t.system_attrs.get(CLAIM_ATTR)) for t in complete) == 3  # all but the two seeds


def test_evo_refuses_a_pareto_job(tiny_model_config_dir: Path) -> None:
    with pytest.raises(ValidationError, match="the evo sampler is single-objective"):
        tiny_job_spec(
            tiny_model_config_dir,
            sampler="evo",
            objectives=["score", "params"],
            target={"param_ratio": 0.8, "min_param_ratio": 0.5},
        )


def test_rescaling_keeps_the_shape_and_gives_a_full_parent_room_to_move() -> None:
    costs = {"attention.0": 1.0, "mlp.0": 2.0, "mlp.1": 2.0}
    full = rescale(dict.fromkeys(costs, 1.0), costs, 0.6)
    assert all(v == pytest.approx(0.6) for v in full.values())
    shaped = rescale({"attention.0": 0.2, "mlp.0": 0.1, "mlp.1": 0.0}, costs, 0.3)
    assert shaped["attention.0"] == pytest.approx(2 * shaped["mlp.0"]) and shaped["mlp.1"] == 0.0
    assert sum(v * costs[n] for n, v in shaped.items()) == pytest.approx(0.3 * 5.0)
