"""One job's search from start to finish: open or resume its study, prime its proxy, run its
trials, wait for the other workers' trials, verify the finalists, audit the proxy (over its whole range,
and around the best: ``search.neighbourhood``).

Storage, the meta-network's store and the caller's hooks (``SearchHooks``) come in as arguments:
the library knows nothing of the service that may be driving it. The rooms it calls: the candidate
builder (``search.candidates``), the trial loop (``search.trials``), several workers
(``search.coordination``), verification and audits (``search.audit``), and the typed results
(``search.results``).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage

from search.audit import trust_audit, verify_finalists
from search.candidates import SearchContext
from search.coordination import await_other_workers, prime_proxy
from search.errors import SearchError
from search.ladder import Verifier
from search.latency_check import check_latency
from search.neighbourhood import neighbourhood_audit
from search.proxies import MetaNetStore, Proxy
from search.results import SearchResult, TrialInfo, best_entry, describe_trial, finalists, pareto_front, proxy_score
from search.trials import NO_HOOKS, SearchHooks, job_proxy, open_study, remaining_trials, search_trials


def run_search(
    context: SearchContext,
    *,
    study_name: str,
    storage: str | BaseStorage | None = None,
    hooks: SearchHooks = NO_HOOKS,
    metanet_store: MetaNetStore | None = None,
    batch: int = 1,
) -> SearchResult:
    """Open or resume the study, run its trials, wait for other workers' trials, verify, audit.

    ``metanet_store`` keeps the meta-network's training data across jobs (audited candidates);
    ``batch``: trials scored together (``search_trials``)."""
    study = open_study(context, study_name=study_name, storage=storage)
    proxy = job_proxy(context)
    # Two fidelities, two verifiers: cheap audits (priming, trust) on the first held-out sequences,
    # and the finalists' ladder up to all of them.
    auditor = Verifier(context.loaded.adapter, context.tokens)
    proxy_state, stopped = _search(
        context, proxy, study, auditor, hooks=hooks, metanet_store=metanet_store, batch=batch
    )
    if not stopped:
        stopped = await_other_workers(study, storage, hooks)
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    trials = [describe_trial(t) for t in frozen.values()]
    result = SearchResult(study_name=study_name, trials=trials, dense=None, stopped=stopped)
    complete = [t for t in trials if t.state == "complete" and t.arch is not None]
    if not complete:
        if stopped:
            return result
        raise SearchError("no trial completed: every candidate failed to score")
    pool = _choose_best(result, complete, multi=context.spec.multi_objective, latency=context.spec.latency_objective)
    if context.spec.verify_top_k and not stopped:
        _verify(context, Verifier(context.loaded.adapter, context.tokens), pool, result, hooks)
    if context.latency is not None and not stopped:
        result.latency = check_latency(context, result)  # the verified candidates, exported and timed
    if not stopped:
        result.trust = trust_audit(
            context, proxy, auditor, complete, store=metanet_store, job=study_name, proxy_state=proxy_state
        )
        if result.trust is not None and result.best is not None:  # beside the audit: where the search looked
            nearby = neighbourhood_audit(context, proxy, auditor, complete, frozen[result.best.trial_number])
            result.trust = result.trust.model_copy(update={"neighbourhood": nearby})
    return result


def _search(
    context: SearchContext,
    proxy: Proxy,
    study: optuna.Study,
    auditor: Verifier,
    *,
    hooks: SearchHooks,
    metanet_store: MetaNetStore | None,
    batch: int,
) -> tuple[dict[str, Any] | None, bool]:
    """Prime the proxy and run this process's trials, unless none remain or the caller stops first.
    Returns the proxy's priming state and whether the hooks stopped the search."""
    proxy_state = study.user_attrs.get("proxy_prime")
    if hooks.stop_requested():
        return proxy_state, True
    remaining = remaining_trials(study, context.spec)
    if remaining <= 0:
        return proxy_state, False
    proxy_state = prime_proxy(context, proxy, study, auditor, metanet_store=metanet_store)
    if hooks.on_primed is not None:
        hooks.on_primed(remaining)
    return proxy_state, search_trials(context, proxy, study, hooks=hooks, batch=batch)


def _choose_best(result: SearchResult, complete: list[TrialInfo], *, multi: bool, latency: bool) -> list[TrialInfo]:
    """Set the Pareto front and the proxy's best; returns the pool the best is chosen from (the
    front for a multi-objective job)."""
    result.pareto = pareto_front(complete, "latency" if latency else "params")
    front = set(result.pareto)
    pool = [t for t in complete if t.number in front] if multi else complete
    result.best = best_entry(max(pool, key=proxy_score), verified=None)
    return pool


def _verify(
    context: SearchContext, verifier: Verifier, pool: list[TrialInfo], result: SearchResult, hooks: SearchHooks
) -> None:
    """Verify the proxy's favourites beside the baselines; the verified best becomes the best.

    The baselines are verified beside the proxy's favourites, so the report compares them and the
    reported best is never worse than a baseline on the verified metric. Finalists climb a
    successive-halving ladder of held-out prefixes; the baselines are verified on every rung
    (search.ladder)."""
    seeds = [t for t in pool if t.origin.startswith("seed:")]
    chosen = [t for t in finalists(pool, context.spec.verify_top_k) if not t.origin.startswith("seed:")]
    ladder = verify_finalists(context, verifier, chosen, seeds, on_verify=hooks.on_verify)
    result.dense, result.verified, result.ladder = ladder.dense, dict(ladder.final), ladder.rungs
    verified = result.verified
    winner = min((t for t in pool if t.number in verified), key=lambda t: (verified[t.number].value, t.number))
    result.best = best_entry(winner, verified=verified[winner.number])
