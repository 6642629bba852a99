"""Search-space options: depth rules, sparsity, the compact parameterisation, Pareto jobs."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest
from transformers import LlamaConfig

from search.candidates import prepare
from search.families import read_shape
from search.loading import LoadedModel
from search.repair import Proposal, repair
from search.spec import JobSpec
from search.study import run_search
from search.trials import SearchHooks
from studystore import make_storage
from tests.conftest import tiny_job_spec

SHAPE = read_shape(
    LlamaConfig(
        hidden_size=256,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=768,
        vocab_size=4096,
    ).to_dict()
)


def _proposals(seed: int, sparsity: bool):
    rng = random.Random(seed)
    for _ in range(150):
        values = [rng.choice([0.0, 1.0, rng.random(), rng.random() ** 3]) for _ in range(16)]
        ratios = tuple(rng.random() * 0.6 for _ in range(8)) if sparsity else ()
        yield Proposal(tuple(values[:8]), tuple(values[8:]), ratios)


@pytest.mark.parametrize("depth", ["sublayer", "layer", "none"])
@pytest.mark.parametrize("sparsity", [False, True])
def test_depth_rules_and_sparsity_keep_the_budget(depth: str, sparsity: bool) -> None:
    budget = 0.55 * SHAPE.dense_params()
    seed = ["sublayer", "layer", "none"].index(depth) * 2 + sparsity  # not hash(): it varies per process
    for proposal in _proposals(seed, sparsity):
        arch = repair(SHAPE, proposal, 0.55, ffn_alignment=32, depth=depth)
        assert abs(SHAPE.count_params(arch) - budget) <= 0.01 * budget
        for layer in arch.layers:
            if depth == "none":
                assert layer.heads > 0 and layer.ffn_channels > 0
            if depth == "layer":
                assert (layer.heads > 0) == (layer.ffn_channels > 0)
        if sparsity:
            assert arch.sparse


def _spec(model: Path, **overrides: object) -> JobSpec:
    calibration = {"n_samples": 4, "seq_len": 32, "heldout_samples": 4}
    defaults = {"n_trials": 8, "seed": 5, "verify_top_k": 2, "calibration": calibration, "search_space": {}}
    return tiny_job_spec(model, **(defaults | overrides))


def test_compact_parameterisation_with_sparsity_seeds_owl(tiny_loaded: LoadedModel, tiny_llama_dir: Path) -> None:
    spec = _spec(tiny_llama_dir, search_space={"ffn_alignment": 8, "parameterization": "compact", "sparsity": 0.5})
    result = run_search(prepare(tiny_loaded, spec), study_name="compact")
    origins = [t.origin for t in result.trials[:3]]
    assert origins == ["seed:uniform", "seed:block_influence", "seed:owl"]
    owl = result.trials[2]
    assert any(layer["sparsity"] > 0 for layer in owl.arch["layers"])
    for trial in result.trials:
        assert trial.state == "complete" and abs(trial.param_ratio - 0.6) <= 0.006


def test_pareto_job_explores_sizes_and_reports_a_front(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    spec = _spec(
        tiny_llama_dir,
        target={"param_ratio": 0.8, "min_param_ratio": 0.45},
        objectives=["score", "params"],
        sampler="nsga2",
        n_trials=10,
        search_space={"ffn_alignment": 8},
    )
    storage = make_storage(f"sqlite:///{tmp_path}/optuna.sqlite3")
    result = run_search(prepare(tiny_loaded, spec), study_name="pareto", storage=storage)
    complete = [t for t in result.trials if t.state == "complete"]
    ratios = [t.param_ratio for t in complete]
    assert min(ratios) < 0.7 and max(ratios) > 0.75 and all(0.44 <= r <= 0.81 for r in ratios)
    assert all(t.values is not None and t.values[1] == t.param_ratio for t in complete)
    front = set(result.pareto)
    for trial in complete:
        dominated = any(
            o.value >= trial.value
            and o.param_ratio <= trial.param_ratio
            and o.number != trial.number
            and (o.value > trial.value or o.param_ratio < trial.param_ratio)
            for o in complete
        )
        assert (trial.number in front) == (not dominated)
    study = optuna.load_study(study_name="pareto", storage=storage)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert {t.number for t in study.best_trials} == front


def test_single_objective_trials_carry_the_budget_constraint(tiny_loaded: LoadedModel, tiny_llama_dir: Path) -> None:
    spec = _spec(tiny_llama_dir, n_trials=3, verify_top_k=0, search_space={"ffn_alignment": 8})
    study_trials = []
    hooks = SearchHooks(on_trial=[lambda s, t: study_trials.append(t)])
    run_search(prepare(tiny_loaded, spec), study_name="constraint", hooks=hooks)
    for trial in study_trials:
        assert trial.system_attrs["constraints:budget"] <= 0
        assert trial.system_attrs["constraints"] == [trial.system_attrs["constraints:budget"]]
