from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.candidates import prepare
from search.loading import LoadedModel
from search.results import TrialInfo, TrustReport, Verification, best_entry
from search.spec import JobSpec
from search.study import run_search
from search.trials import SearchHooks, job_proxy
from studystore import make_storage
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
        assert trial.scores[spec.proxy_label] == trial.value
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
    spec = _spec(tiny_llama_dir, proxy="tracenas")
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


def _trial(**overrides: object) -> TrialInfo:
    fields: dict[str, object] = dict(
        number=3,
        state="complete",
        origin="sampler",
        value=0.5,
        values=None,
        arch={"layers": [{"heads": 2, "ffn_channels": 64, "sparsity": 0.0}]},
        param_count=1000,
        param_ratio=0.6,
        scores={"tracenas": 0.5, "tracenas_sum": 2.0},
        timings={"score_s": 0.1},
        duration_s=0.2,
        error=None,
    )
    return TrialInfo.model_validate(fields | overrides)


def test_the_best_entry_serialises_to_the_json_the_service_stores() -> None:
    """The service stores ``best`` as JSON and serves it over REST: its keys and the flat form of
    its verified figures are a contract."""
    verified = Verification(primary="kl", metrics={"kl": 0.25, "ppl": 31.5}, tokens=1024)
    best = best_entry(_trial(), verified=verified).model_dump()
    assert list(best) == [
        "trial_number",
        "origin",
        "arch",
        "param_count",
        "param_ratio",
        "score",
        "scores",
        "verified",
    ]
    assert best["verified"] == {"kl": 0.25, "ppl": 31.5, "tokens": 1024, "primary": "kl"}
    assert list(best["verified"]) == ["kl", "ppl", "tokens", "primary"]
    assert best["score"] == 0.5 and best["trial_number"] == 3 and best["arch"] == _trial().arch
    assert json.loads(json.dumps(best)) == best
    assert best_entry(_trial(value=None), verified=None).model_dump()["verified"] is None


def test_report_sections_omit_what_a_job_did_not_produce() -> None:
    """As before the typed contract: ``audit.stored`` only when a store took the audit, and
    ``proxy_state`` only for a proxy that was primed."""
    agreement = {
        "spearman": 0.5,
        "spearman_ci": [0.1, 0.8],
        "kendall": 0.4,
        "kendall_ci": None,
        "n": 5,
        "params_spearman": None,
        "depth_spearman": 0.2,
        "poor": False,
    }
    audit = {"size": 5, "sequences": 2, "tokens": 128, "stratified_by": "tracenas", "trials": [1, 2]}
    report = {
        "metric": "kl",
        "sign": "+1 = ...",
        "objective": "tracenas",
        "threshold": 0.3,
        "proxies": {"tracenas": agreement},
        "flagged": False,
        "flags": [],
        "audit": audit | {"verified": {"1": 0.5, "2": 0.25}},
    }
    plain = TrustReport.model_validate(report).model_dump()
    assert "proxy_state" not in plain and "stored" not in plain["audit"] and "neighbourhood" not in plain
    assert plain["proxies"]["tracenas"] == agreement
    stored = report | {"audit": report["audit"] | {"stored": True}, "proxy_state": {"members": ["tracenas"]}}
    full = TrustReport.model_validate(stored).model_dump()
    assert full["audit"]["stored"] is True and full["proxy_state"] == {"members": ["tracenas"]}
    assert list(full) == [*report, "proxy_state"]
