"""What a job verifies beside its search: the proxy's reference population, the finalists' ladder,
and the trust audit (with the meta-network's training records).

``search.study.run_search`` calls these in order (each takes the job's proxy explicitly):
1. ``prime`` (before the first trial, for proxies that need it): a seeded population of random
   candidates at the job's budget primes the ensemble's ranks, and is audited for the
   meta-network's training data when the proxy is ``metanet``;
2. ``verify_finalists``: successive halving over held-out prefixes (``search.ladder``);
3. ``trust_audit``: a sample stratified over the proxy's quantiles, verified cheaply on the first
   held-out sequences, each used proxy's correlation with it (``search.trust``); the audited
   candidates' features and metrics go to the meta-network's store, when there is one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from search.arch import ArchConfig
from search.candidates import SearchContext
from search.errors import BudgetInfeasible, ProxyError
from search.ladder import LadderResult, Verifier, audit, min_sequences, successive_halving
from search.proxies import Priming, Proxy, ProxyBuild
from search.proxies.metanet import MetaNet, feature_builder, make_record
from search.proxies.metanet_store import MetaNetStore
from search.repair import Proposal
from search.results import AuditSample, TrialInfo, TrustReport
from search.selection import Selection
from search.trust import stratified_sample, trust_report

REFERENCE_SIZE = 16  # candidates in the population that primes ensembles and the meta-network


def audit_sequences(verifier: Verifier) -> int:
    """The cheap fidelity: a quarter of the held-out sequences (at least what a figure needs)."""
    return min(verifier.available, max(min_sequences(verifier.adapter), verifier.available // 4))


def population(context: SearchContext, size: int = REFERENCE_SIZE, *, seed: int = 0) -> list[Selection]:
    """Distinct random candidates at the job's budget(s), repaired like trials are."""
    rng = random.Random(seed * 7_919 + 17)
    low, high = context.ratio_range()
    chosen: dict[str, Selection] = {}
    for _ in range(size * 8):
        if len(chosen) >= size:
            break
        try:
            proposal = _random_proposal(context, rng)
            selection = context.candidate(proposal, rng.uniform(low, high) if low < high else high)
        except BudgetInfeasible:
            continue
        chosen.setdefault(selection.arch.to_json(), selection)
    return list(chosen.values())


def _random_proposal(context: SearchContext, rng: random.Random) -> Proposal:
    """One proposal drawn the way the job's parameterisation spans the space."""
    space, layers = context.spec.search_space, context.shape.num_layers
    if space.parameterization == "compact":
        return context.space.compact_proposal(
            rng.uniform(-1, 1),
            rng.uniform(-1, 1),
            rng.randint(0, layers // 2) if space.depth != "none" else 0,
            rng.randint(0, layers // 2) if space.depth == "sublayer" else 0,
            rng.uniform(0, space.sparsity) if space.sparsity > 0 else 0.0,
        )

    def fraction() -> float:
        draw = rng.random()
        return 0.0 if draw < 0.12 else 1.0 if draw < 0.24 else rng.random()

    # The draws' order (sparsity, attention, MLP) is part of the seeded population: keep it.
    sparsity = tuple(rng.uniform(0, space.sparsity) for _ in range(layers)) if space.sparsity > 0 else ()
    return Proposal(tuple(fraction() for _ in range(layers)), tuple(fraction() for _ in range(layers)), sparsity)


def prime(
    context: SearchContext,
    proxy: Proxy,
    verifier: Verifier,
    *,
    store: MetaNetStore | None,
    job: str,
    previous: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Prime the job's proxy if it needs it; returns its state for the report (None if it does not)."""
    sequences = audit_sequences(verifier)

    def verify(selections: Sequence[Selection]) -> list[float]:
        keys = {("prime", i): s for i, s in enumerate(selections)}
        figures = audit(verifier, keys, sequences)
        return [figures[key].value for key in keys]

    priming = Priming(
        lambda: population(context, seed=context.spec.seed or 0),
        audit=verify,
        store=store,
        job=job,
        model=context.spec.model,
        previous=previous,
    )
    return proxy.prime(priming)


def verify_finalists(
    context: SearchContext,
    verifier: Verifier,
    finalists: Sequence[TrialInfo],
    baselines: Sequence[TrialInfo],
    *,
    on_verify: Callable[[int, int], None] | None = None,
) -> LadderResult:
    def selection(trial: TrialInfo) -> Selection:
        return context.selection(ArchConfig.from_dict(trial.arch))  # type: ignore[arg-type]

    return successive_halving(
        verifier,
        [(t.number, selection(t)) for t in finalists],
        [(t.number, selection(t)) for t in baselines],
        on_batch=on_verify,
    )


def trust_audit(
    context: SearchContext,
    proxy: Proxy,
    verifier: Verifier,
    complete: Sequence[TrialInfo],
    *,
    store: MetaNetStore | None,
    job: str,
    proxy_state: dict[str, Any] | None,
) -> TrustReport | None:
    """The report's ``trust`` section; appends the audited candidates to ``store``."""
    spec = context.spec
    distinct: dict[str, TrialInfo] = {}
    for trial in sorted(complete, key=lambda t: t.number):
        if trial.arch is not None and trial.value is not None:
            distinct.setdefault(ArchConfig.from_dict(trial.arch).to_json(), trial)
    if spec.audit_size == 0 or len(distinct) < 3:
        return None
    trials = {t.number: t for t in distinct.values()}
    numbers = stratified_sample([(t.number, t.value) for t in trials.values()], spec.audit_size, seed=spec.seed or 0)
    sampled = [trials[n] for n in numbers]
    selections = {n: context.selection(ArchConfig.from_dict(trials[n].arch)) for n in numbers}  # type: ignore[arg-type]
    sequences = audit_sequences(verifier)
    figures = audit(verifier, selections, sequences)
    metric = figures[numbers[0]].primary
    report = trust_report(
        _proxy_views(proxy, sampled, selections),
        [figures[n].value for n in numbers],
        params=[float(t.param_count or 0) for t in sampled],
        depth=[float(kept_blocks(ArchConfig.from_dict(t.arch))) for t in sampled],  # type: ignore[arg-type]
        objective=proxy.name,
        metric=metric,
        seed=spec.seed or 0,
    )
    stored = None
    if store is not None:
        _store_records(context, proxy, store, job, [(selections[n], figures[n].value) for n in numbers], metric)
        stored = True
    sample = AuditSample(
        size=len(numbers),
        sequences=sequences,
        tokens=figures[numbers[0]].tokens,
        stratified_by=proxy.name,
        trials=numbers,
        verified={str(n): figures[n].value for n in numbers},
        stored=stored,
    )
    return TrustReport.model_validate(report | {"audit": sample, "proxy_state": proxy_state})


def kept_blocks(arch: ArchConfig) -> int:
    """Kept sub-blocks: the depth whose bias the trust report measures."""
    return sum(layer.attention_kept + layer.mlp_kept for layer in arch.layers)


def _proxy_views(
    proxy: Proxy, sampled: Sequence[TrialInfo], selections: dict[int, Selection]
) -> dict[str, list[float | None]]:
    """Every figure the trust report correlates, per audited trial: the job's proxy score, each
    composite member's recorded score, and each consulted member's views (scored now when a trial
    did not record them, e.g. behind the ensemble's prefilter)."""
    label = proxy.name
    views: dict[str, list[float | None]] = {label: [t.value for t in sampled]}
    composite = [p for p in proxy.members if p.members]
    for member in composite:  # e.g. the fallback ensemble of a meta-network without data
        views[member.name] = [t.scores.get(member.name) for t in sampled]
    consulted = [p for p in proxy.members if not p.members and p.ready]
    for member in consulted:
        for view in proxy_views(member.name):
            views.setdefault(view, [])
        for trial in sampled:
            scored = _member_views(member, trial, selections[trial.number])
            for view in proxy_views(member.name):
                views[view].append(scored.get(view))
    if label in ("tracenas", "prunenet"):
        for view in proxy_views(label)[1:]:
            views[view] = [t.scores.get(view) for t in sampled]
    return views


def _member_views(member: Proxy, trial: TrialInfo, selection: Selection) -> dict[str, float]:
    """A member proxy's views of one trial: as recorded, or scored now."""
    recorded = trial.scores
    if all(view in recorded for view in proxy_views(member.name)):
        return {view: recorded[view] for view in proxy_views(member.name)}
    try:
        result = member.score(selection)
    except ProxyError:
        return {}
    return {member.name: result.value, **result.extras}


def proxy_views(name: str) -> list[str]:
    """The figures of a proxy the trust report correlates (its score first)."""
    return {
        "tracenas": ["tracenas", "tracenas_sum"],
        "prunenet": ["prunenet", "prunenet_mlp", "prunenet_attention"],
    }.get(name, [name])


def _store_records(
    context: SearchContext,
    proxy: Proxy,
    store: MetaNetStore,
    job: str,
    audited: list[tuple[Selection, float]],
    metric: str,
) -> None:
    loaded = context.loaded
    builder = feature_builder(
        ProxyBuild(loaded.adapter, context.tokens, loaded.artifacts, context.spec.seed or 0, dense_stats=context.stats)
    )
    records = [make_record(builder, s, m, metric_name=metric, job=job, model=context.spec.model) for s, m in audited]
    primed = [p for p in [proxy, *proxy.members] if isinstance(p, MetaNet)]
    for metanet in primed:
        records += metanet.pending
        metanet.pending = []
    store.add(records)
