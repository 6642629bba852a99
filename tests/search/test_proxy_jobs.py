"""Jobs with the new proxies end to end (tiny model): the ensemble's prefilter, the trust report,
the verification ladder, the meta-network's store, its fallback without data, and PruneNet as a
selection criterion."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.candidates import prepare
from search.criteria.prunenet import policy_for
from search.loading import LoadedModel
from search.proxies import MetaNetStore
from search.spec import JobSpec
from search.study import run_search
from tests.conftest import tiny_job_spec


def _spec(model: Path, **overrides: object) -> JobSpec:
    calibration = {"n_samples": 4, "seq_len": 64, "heldout_samples": 8}
    defaults = {"n_trials": 10, "seed": 4, "verify_top_k": 4, "audit_size": 10, "calibration": calibration}
    return tiny_job_spec(model, **(defaults | overrides))


def test_ensemble_job_reports_trust_ladder_and_feeds_the_metanet_store(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    store = MetaNetStore(tmp_path / "metanet")
    spec = _spec(tiny_llama_dir, proxy=["tracenas", "prunenet"])
    result = run_search(prepare(tiny_loaded, spec), study_name="ensemble-job", metanet_store=store)
    complete = [t for t in result.trials if t.state == "complete"]
    assert len(complete) == 10 and all(t.scores["ensemble"] == t.value for t in complete)
    assert all("prunenet" in t.scores and "ensemble_gated" in t.scores for t in complete)
    gated = [t for t in complete if t.scores["ensemble_gated"] == 1.0]
    assert all("tracenas" not in t.scores for t in gated)  # the prefilter skipped the backward pass

    trust = result.trust
    assert trust is not None and trust.objective == "ensemble" and trust.metric == "kl"
    assert {"ensemble", "prunenet", "tracenas", "tracenas_sum"} <= set(trust.proxies)
    assert trust.audit.size == 10 and trust.audit.stratified_by == "ensemble" and trust.audit.stored
    for entry in trust.proxies.values():
        assert entry.n == 10 and {"spearman_ci", "kendall", "depth_spearman", "params_spearman"} <= set(
            entry.model_dump()
        )
    assert trust.proxy_state is not None and trust.proxy_state["members"] == ["prunenet", "tracenas"]
    # Near the best, the ensemble is scored ungated beside its members.
    nearby = trust.neighbourhood
    assert nearby is not None and {"ensemble", "prunenet", "tracenas"} <= set(nearby.proxies)
    assert all(entry.n == nearby.size for entry in nearby.proxies.values())

    assert result.ladder and result.ladder[-1].sequences == 8
    assert [r.sequences for r in result.ladder] == sorted(r.sequences for r in result.ladder)
    seeds = {t.number for t in result.trials if t.origin.startswith("seed:")}
    assert seeds <= set(result.verified)
    assert result.best is not None and result.best.verified is not None
    assert result.best.verified["kl"] == min(v.value for v in result.verified.values())

    records = store.records("llama")
    assert len(records) == 10 and {r["job"] for r in records} == {"ensemble-job"}
    assert len(records[0]["features"]) == 8 and records[0]["metric"] == "kl"


def test_metanet_says_it_has_no_data_then_learns_from_earlier_jobs(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    store = MetaNetStore(tmp_path / "metanet")
    first = run_search(
        prepare(tiny_loaded, _spec(tiny_llama_dir, proxy="metanet", n_trials=6, verify_top_k=1)),
        study_name="metanet-1",
        metanet_store=store,
    )
    assert first.trust is not None and first.trust.proxy_state is not None
    state = first.trust.proxy_state
    assert state["ready"] is False and "not enough data" in state["note"]
    scored = [t for t in first.trials if t.state == "complete"]
    assert all(t.scores["metanet_ready"] == 0.0 and t.scores["ensemble"] == t.value for t in scored)
    assert len(store.records("llama")) == 16 + first.trust.audit.size

    second = run_search(
        prepare(tiny_loaded, _spec(tiny_llama_dir, proxy="metanet", n_trials=6, verify_top_k=1, seed=9)),
        study_name="metanet-2",
        metanet_store=store,
    )
    assert second.trust is not None and second.trust.proxy_state is not None
    state = second.trust.proxy_state
    assert state["ready"] is True and state["jobs"] == 2 and state["parameters"] < 10_000
    assert all(t.scores["metanet_ready"] == 1.0 for t in second.trials if t.state == "complete")
    assert set(second.trust.proxies) == {"metanet"}


def test_prunenet_policy_as_the_selection_criterion(tiny_loaded: LoadedModel, tiny_llama_dir: Path) -> None:
    spec = _spec(
        tiny_llama_dir,
        proxy="prunenet",
        n_trials=4,
        verify_top_k=0,
        audit_size=0,
        search_space={"ffn_alignment": 8, "selection": "prunenet"},
    )
    context = prepare(tiny_loaded, spec)
    expected = policy_for(tiny_loaded.adapter, tiny_loaded.artifacts, 4).importance(tiny_loaded.adapter)
    assert all((a == b).all() for a, b in zip(context.importance.channels, expected.channels, strict=True))
    result = run_search(context, study_name="prunenet-selection")
    assert sum(t.state == "complete" for t in result.trials) == 4 and result.trust is None


def test_a_worker_primes_a_jobs_proxy_once(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker taking several chunks of one job audits the reference population once; another job
    on the same (shared) proxy object primes it again."""
    from search.coordination import PrimedProxies, prime_proxy
    from search.ladder import Verifier
    from search.proxies import Ensemble
    from search.trials import job_proxy, open_study
    from studystore import make_storage

    context = prepare(tiny_loaded, _spec(tiny_llama_dir, proxy=["tracenas", "prunenet"]))
    proxy = job_proxy(context)
    storage = make_storage(f"sqlite:///{tmp_path}/optuna.sqlite3")
    auditor = Verifier(context.loaded.adapter, context.tokens)
    primed = PrimedProxies()  # this worker process's record of what its proxies were primed for
    study = open_study(context, study_name="chunked", storage=storage)
    assert prime_proxy(context, proxy, study, auditor, metanet_store=None, primed=primed) is not None
    calls: list[str] = []
    monkeypatch.setattr(Ensemble, "prime", lambda _self, priming: calls.append(priming.job) or {"weights": {}})
    again = prime_proxy(context, proxy, study, auditor, metanet_store=None, primed=primed)
    assert again == study.user_attrs["proxy_prime"]
    assert calls == []
    other = open_study(context, study_name="another-job", storage=storage)
    prime_proxy(context, proxy, other, auditor, metanet_store=None, primed=primed)
    assert calls == ["another-job"]
    prime_proxy(context, proxy, study, auditor, metanet_store=None, primed=primed)
    assert calls == ["another-job", "chunked"]  # primed for another job since: the first job's chunk primes again


def test_priming_draws_the_reference_population_only_for_proxies_that_use_it(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from search import audit
    from search.ladder import Verifier
    from search.trials import job_proxy

    drawn: list[int] = []
    draw = audit.population
    monkeypatch.setattr(audit, "population", lambda *a, **k: drawn.append(1) or draw(*a, **k))
    for proxy_name, draws in (("tracenas", 0), (["tracenas", "prunenet"], 1)):
        context = prepare(tiny_loaded, _spec(tiny_llama_dir, proxy=proxy_name))
        verifier = Verifier(context.loaded.adapter, context.tokens)
        drawn.clear()
        audit.prime(context, job_proxy(context), verifier, store=None, job="priming", previous=None)
        assert len(drawn) == draws, proxy_name
