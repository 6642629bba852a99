from __future__ import annotations

from pathlib import Path

import pytest

from search.loading import LoadedModel
from search.spec import JobSpec
from search.candidates import prepare
from search.storage import make_storage
from search.study import run_search
from search.trials import SearchHooks, job_proxy
from tests.conftest import tiny_job_spec


def _spec(model: Path, **overrides: object) -> JobSpec:
    return tiny_job_spec(model, **({"n_trials": 8, "seed": 3, "verify_top_k": 3} | overrides))


def test_search_meets_the_budget_seeds_baselines_and_verifies(tiny_loaded: LoadedModel, tiny_llama_dir: Path) -> None:
    spec = _spec(tiny_llama_dir)
    seen: list[int] = []
    result = run_search(
        prepare(tiny_loaded, spec), study_name="t", hooks=SearchHooks(on_trial=[lambda _s, t: seen.append(t.number)])
    )
    assert [t.origin for t in result.trials[:2]] == ["seed:uniform", "seed:block_influence"]
    complete = [t for t in result.trials if t.state == "complete"]
    assert len(complete) == 8 and seen == [t.number for t in result.trials]
    for trial in complete:
        assert abs(trial.param_ratio - 0.6) <= 0.01 * 0.6
        assert trial.scores["tracenas"] == trial.value
    seeds = {t.number for t in result.trials if t.origin.startswith("seed:")}
    assert seeds <= set(result.verified) and 3 <= len(result.verified) <= 5
    assert result.dense is not None and result.dense.metrics["kl"] == 0.0
    best = result.best
    assert best is not None and best.verified["kl"] == min(v.metrics["kl"] for v in result.verified.values())
    assert all(v.metrics["kl"] > 0 for v in result.verified.values())


@pytest.mark.parametrize("sampler", ["random", "nsga2", "cmaes"])
def test_every_sampler_runs(tiny_loaded: LoadedModel, tiny_llama_dir: Path, sampler: str) -> None:
    spec = _spec(tiny_llama_dir, sampler=sampler, n_trials=4, verify_top_k=0)
    result = run_search(prepare(tiny_loaded, spec), study_name=sampler)
    assert sum(t.state == "complete" for t in result.trials) == 4
    assert result.best is not None and result.best.verified is None


def test_stop_between_trials_and_resume(tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path}/optuna.sqlite3")
    spec = _spec(tiny_llama_dir, n_trials=6, verify_top_k=1)
    context = prepare(tiny_loaded, spec)
    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    stopped = run_search(context, study_name="resume", storage=storage, hooks=SearchHooks(should_stop=stop_after_three))
    assert stopped.stopped and len(stopped.trials) == 3 and not stopped.verified
    resumed = run_search(context, study_name="resume", storage=storage)
    assert [t.number for t in resumed.trials] == list(range(6))
    assert not resumed.stopped and 1 <= len(resumed.verified) <= 3  # the best, plus the two seeds


def test_dense_statistics_and_sketch_are_reused_by_the_next_process(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second worker (a fresh load with an empty memory cache) reads the dense statistics and
    TraceNAS's dense sketch from the artifact store and scores candidates exactly as the first."""
    import torch

    from search.arch import ArchConfig, LayerArch
    from search.artifacts import model_fingerprint
    from search.loading import load_model

    artifacts = tmp_path / "artifacts"
    spec = _spec(tiny_llama_dir)
    arch = ArchConfig((LayerArch(2, 128), LayerArch(0, 256), LayerArch(4, 0), LayerArch(2, 64)))
    first = prepare(load_model(str(tiny_llama_dir), artifacts=artifacts), spec)
    first_proxy = job_proxy(first)
    entry = artifacts / model_fingerprint(str(tiny_llama_dir), None)
    names = sorted(p.name.split("-")[0] for p in entry.iterdir())
    assert names == ["stats", "tracenas"]

    def recomputed(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the dense pass ran again")

    monkeypatch.setattr("search.stats.collect_stats", recomputed)
    monkeypatch.setattr("search.proxies.tracenas.TraceNAS._sketch", recomputed)
    second = prepare(load_model(str(tiny_llama_dir), artifacts=artifacts), spec)
    second_proxy = job_proxy(second)
    monkeypatch.undo()
    assert second.stats is not first.stats  # read back, not shared memory
    assert torch.equal(second.stats.block_influence, first.stats.block_influence)
    assert second.stats.inputs.keys() == first.stats.inputs.keys()
    assert first_proxy.score(first.selection(arch)).value == second_proxy.score(second.selection(arch)).value
