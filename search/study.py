"""The Optuna driver: sample an allocation, repair it to the budget, select units, score.

``prepare`` builds what every trial reuses (tokens, dense statistics, importance, layer signals, the
proxy's dense reference); ``run_search`` runs or resumes the study, verifies the finalists and
returns the result. Storage, callbacks and the stop condition come in as arguments: the library
knows nothing of the service that may be driving it.

Single-objective jobs maximise the proxy score at the budget, which is also declared to Optuna as a
constraint (``Trial.set_constraint``), so samplers and optuna-dashboard see feasibility. Multi-objective jobs
(``objectives: ["score", "params"]``) sample the budget too, between ``min_param_ratio`` and
``param_ratio``, and search the Pareto front of score against parameter ratio.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from search.adapters import Block
from search.arch import ArchConfig, ModelShape
from search.audit import prime, trust_audit, verify_finalists
from search.calibration import TokenSet, build_token_set
from search.criteria import IMPORTANCE, compute_importance
from search.errors import ProxyError, SearchError
from search.ladder import Verifier
from search.loading import LoadedModel
from search.proxies import MetaNetStore, Proxy, create_proxy
from search.repair import DEFAULT_TOLERANCE, Proposal, repair
from search.selection import Selection, SparsityScorer, select_units
from search.space import LAYER_SIGNALS, LayerSignals, Space
from search.spec import JobSpec
from search.stats import DenseStats, cached_stats
from search.units import Importance
from search.verify import Verification

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]

DEFAULT_BATCH_SIZE = 8
_OUTLIER_MULTIPLE = 5.0  # OWL's M: a weight is an outlier above M × its layer's mean Wanda score


@dataclass
class SearchContext:
    """Everything trials share. Built once per (model, calibration, criterion, proxy); reused across jobs."""

    loaded: LoadedModel
    spec: JobSpec
    tokens: TokenSet
    stats: DenseStats
    importance: Importance
    space: Space
    proxy: Proxy
    prepare_seconds: float

    @property
    def shape(self) -> ModelShape:
        return self.loaded.adapter.shape

    def ratio_range(self) -> tuple[float, float]:
        """The budgets trials are repaired to, as fractions of all parameters."""
        target = self.spec.target
        high = target.total_ratio(self.shape, target.param_ratio)
        if not self.spec.multi_objective:
            return high, high
        if target.min_param_ratio is not None:
            return target.total_ratio(self.shape, target.min_param_ratio), high
        return max(high / 2, self.shape.min_param_ratio() * 1.05), high

    def candidate(self, proposal: Proposal, param_ratio: float) -> Selection:
        space = self.spec.search_space
        arch = repair(
            self.shape,
            proposal,
            param_ratio,
            ffn_alignment=space.ffn_alignment,
            depth=space.depth,
            width=space.width,
        )
        return self.selection(arch)

    def selection(self, arch: ArchConfig) -> Selection:
        """Which units and weights ``arch`` keeps, by the job's criteria."""
        scorer = SparsityScorer(self.spec.search_space.sparsity_selection, self.stats) if arch.sparse else None
        return select_units(self.importance, arch, self.shape.group_size, scorer)


@dataclass(frozen=True)
class TrialInfo:
    """A finished trial as the service and the CLI show it."""

    number: int
    state: str
    origin: str
    value: float | None
    values: list[float] | None
    arch: dict[str, Any] | None
    param_count: int | None
    param_ratio: float | None
    scores: dict[str, float]
    timings: dict[str, float]
    duration_s: float | None
    error: str | None


@dataclass
class SearchResult:
    study_name: str
    trials: list[TrialInfo]
    dense: Verification | None
    verified: dict[int, Verification] = field(default_factory=dict)
    pareto: list[int] = field(default_factory=list)  # trial numbers of the non-dominated trials
    best: dict[str, Any] | None = None
    stopped: bool = False
    ladder: list[dict[str, Any]] = field(default_factory=list)  # verification rungs (search.ladder)
    trust: dict[str, Any] | None = None  # the proxy trust report (search.trust)


def prepare(
    loaded: LoadedModel, spec: JobSpec, *, batch_size: int = DEFAULT_BATCH_SIZE, tokens: TokenSet | None = None
) -> SearchContext:
    """``tokens`` overrides the spec's calibration texts (benchmarks use random tokens)."""
    started = time.perf_counter()
    adapter = loaded.adapter
    if tokens is None:
        tokens = build_token_set(loaded.tokenizer, spec.calibration, causal=adapter.shape.causal)
    artifacts = loaded.artifacts
    stats = cached_stats(adapter, tokens, artifacts, batch_size=batch_size)
    seed = spec.seed or 0
    importance = compute_importance(
        adapter, stats, spec.search_space.selection, seed=seed, artifacts=artifacts, digest=tokens.digest
    )
    signals = artifacts.get(
        LAYER_SIGNALS,
        tokens.digest,
        lambda: _layer_signals(loaded, stats, artifacts.peek(IMPORTANCE, ("wanda", tokens.digest, None))),
    )
    proxy_name = spec.proxy if isinstance(spec.proxy, str) else tuple(spec.proxy)
    proxy = create_proxy(
        proxy_name, adapter, tokens, seed=seed, batch_size=batch_size, stats=stats, artifacts=artifacts
    )
    space = Space(adapter.shape, spec.search_space, signals)
    return SearchContext(loaded, spec, tokens, stats, importance, space, proxy, time.perf_counter() - started)


def make_storage(url: str, *, heartbeat_interval: int = 30, grace_period: int = 120, max_retry: int = 2) -> RDBStorage:
    """RDB storage with heartbeats, so a trial whose worker died is failed and retried."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 30, "factory": _WalConnection}
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
    )


class _WalConnection(sqlite3.Connection):
    """Every sampled parameter and attribute is a commit; in SQLite's default rollback journal each
    one is an fsync and blocks readers. WAL lets the workers of a job read while one writes, and
    synchronous=NORMAL (still crash-safe in WAL mode) drops the per-commit fsync."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode=WAL")
        self.execute("PRAGMA synchronous=NORMAL")


def create_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise SearchError(f"unknown sampler {name!r}")


def open_study(context: SearchContext, *, study_name: str, storage: str | BaseStorage | None = None) -> optuna.Study:
    """Create the job's study (metric names, provenance, baseline seeds) or load it as it is."""
    spec = context.spec
    multi = spec.multi_objective
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=create_sampler(spec.sampler, spec.seed),
        directions=["maximize", "minimize"] if multi else ["maximize"],
        load_if_exists=True,
    )
    if not study.trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.proxy_label, "param_ratio"] if multi else [spec.proxy_label])
        study.set_user_attr("spec", spec.model_dump(mode="json"))
        study.set_user_attr("dense_params", context.shape.dense_params())
        study.set_user_attr("calibration_digest", context.tokens.digest)
        _, high = context.ratio_range()
        for origin, params in context.space.seeds(high).items():
            if multi:
                params = params | {"param_ratio": high}
            study.enqueue_trial(params, user_attrs={"origin": origin}, skip_if_exists=True)
    return study


def remaining_trials(study: optuna.Study, spec: JobSpec) -> int:
    """Trials still to complete, counted over every worker of the study."""
    return spec.n_trials - len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def search_trials(
    context: SearchContext,
    study: optuna.Study,
    *,
    max_trials: int | None = None,
    callbacks: Sequence[TrialCallback] = (),
    should_stop: Callable[[], bool] | None = None,
) -> bool:
    """Run trials until the study holds ``n_trials`` complete ones, counting every worker's (or this
    call has run ``max_trials``). Several processes may do this on one study at once: the storage
    hands each waiting seed to one of them and the sampler sees the others' running trials.
    Returns whether ``should_stop`` stopped it."""
    spec = context.spec
    shape = context.shape
    dense_params = shape.dense_params()
    multi = spec.multi_objective
    low, high = context.ratio_range()

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        started = time.perf_counter()
        proposal = context.space.suggest(trial)
        budget = trial.suggest_float("param_ratio", low, high) if multi else high
        sampled = time.perf_counter()
        selection = context.candidate(proposal, budget)
        param_count = shape.count_params(selection.arch)
        realised = time.perf_counter()
        trial.set_user_attr("arch", selection.arch.to_dict())
        trial.set_user_attr("param_count", param_count)
        trial.set_user_attr("param_ratio", param_count / dense_params)
        # Feasible (≤ 0) within the tolerance of the budget. Samplers read Optuna 5's named constraint;
        # optuna-dashboard (0.21) still reads the plain "constraints" list, so write that too.
        violation = abs(param_count / dense_params - budget) / budget - DEFAULT_TOLERANCE
        trial.set_constraint("budget", violation)
        trial.storage.set_trial_system_attr(trial._trial_id, "constraints", [violation])
        scoring = time.perf_counter()
        try:
            score = context.proxy.score(selection)
        except ProxyError as error:
            trial.set_user_attr("error", str(error))  # Optuna 5 keeps no failure reason of its own
            raise
        scored = time.perf_counter()
        trial.set_user_attr("scores", {context.proxy.name: score.value, **score.extras})
        trial.set_user_attr(
            "timings",
            {
                "sample_s": sampled - started,
                "realise_s": realised - sampled,
                "score_s": scored - scoring,
                **score.timings,
            },
        )
        return (score.value, param_count / dense_params) if multi else score.value

    stopped = False  # the caller asked before priming; check_stop asks after every trial
    remaining = remaining_trials(study, spec)
    if remaining <= 0:
        return stopped

    def check_stop(study: optuna.Study, _trial: FrozenTrial) -> None:
        nonlocal stopped
        if should_stop is not None and should_stop():
            stopped = True
            study.stop()

    # Failed trials (a non-finite score) do not count towards n_trials, but are bounded.
    budget = remaining + max(3, spec.n_trials // 10)
    study.optimize(
        objective,
        n_trials=budget if max_trials is None else min(budget, max_trials),
        callbacks=[*callbacks, MaxTrialsCallback(spec.n_trials, states=(TrialState.COMPLETE,)), check_stop],
        catch=(ProxyError,),
        gc_after_trial=False,
    )
    return stopped


# Per-job state, not a model artifact: the job each shared proxy object was last primed for.
_PRIMED_FOR: weakref.WeakKeyDictionary[Proxy, str] = weakref.WeakKeyDictionary()


def prime_proxy(
    context: SearchContext,
    study: optuna.Study,
    auditor: Verifier,
    *,
    metanet_store: MetaNetStore | None,
) -> dict[str, Any] | None:
    """Prime the job's proxy (ensembles rank against a reference population, the meta-network
    trains; search.audit). Deterministic, so every worker of a job primes it the same way; the
    first stores the state for the report."""
    proxy_state = study.user_attrs.get("proxy_prime")
    # The proxy object is shared by every job on this model in this process: a worker taking a second
    # chunk of the same job finds it primed for that job already and skips the audit.
    if _PRIMED_FOR.get(context.proxy) == study.study_name and proxy_state is not None:
        return proxy_state
    primed = prime(context, auditor, store=metanet_store, job=study.study_name, previous=proxy_state)
    if primed is not None and proxy_state is None:
        study.set_user_attr("proxy_prime", primed)
    _PRIMED_FOR[context.proxy] = study.study_name
    return primed if primed is not None else proxy_state


def search_chunk(
    context: SearchContext,
    *,
    study_name: str,
    storage: str | BaseStorage,
    max_trials: int,
    callbacks: Sequence[TrialCallback] = (),
    should_stop: Callable[[], bool] | None = None,
    metanet_store: MetaNetStore | None = None,
) -> int:
    """Help with a study another process opened and verifies: run up to ``max_trials`` of its trials.
    Returns how many this call ran (0 when the study is complete, stopped, or not opened yet)."""
    # Seeded like the coordinator, every worker would propose the coordinator's candidates again;
    # each process draws its own stream (runs with several workers are not reproducible anyway).
    seed = None if context.spec.seed is None else context.spec.seed + os.getpid()
    try:
        study = optuna.load_study(
            study_name=study_name, storage=storage, sampler=create_sampler(context.spec.sampler, seed)
        )
    except KeyError:
        return 0
    if remaining_trials(study, context.spec) <= 0 or (should_stop is not None and should_stop()):
        return 0
    ran = 0

    def count(_study: optuna.Study, _trial: FrozenTrial) -> None:
        nonlocal ran
        ran += 1

    prime_proxy(context, study, Verifier(context.loaded.adapter, context.tokens), metanet_store=metanet_store)
    search_trials(context, study, max_trials=max_trials, callbacks=[*callbacks, count], should_stop=should_stop)
    return ran


def run_search(
    context: SearchContext,
    *,
    study_name: str,
    storage: str | BaseStorage | None = None,
    callbacks: Sequence[TrialCallback] = (),
    should_stop: Callable[[], bool] | None = None,
    on_verify: Callable[[int, int], None] | None = None,
    metanet_store: MetaNetStore | None = None,
    on_primed: Callable[[int], None] | None = None,
) -> SearchResult:
    """Open or resume the study, run its trials, wait for other workers' trials, verify, audit.

    ``metanet_store`` keeps the meta-network's training data across jobs (audited candidates).
    ``on_primed(remaining)`` is called once the study is ready for other workers (``search_chunk``)."""
    spec = context.spec
    multi = spec.multi_objective
    study = open_study(context, study_name=study_name, storage=storage)
    stopped = should_stop is not None and should_stop()

    # Two fidelities, two verifiers: cheap audits (priming, trust) on the first held-out sequences,
    # and the finalists' ladder up to all of them.
    verifier = Verifier(context.loaded.adapter, context.tokens)
    auditor = Verifier(context.loaded.adapter, context.tokens)
    proxy_state = study.user_attrs.get("proxy_prime")
    remaining = remaining_trials(study, spec)
    if remaining > 0 and not stopped:
        proxy_state = prime_proxy(context, study, auditor, metanet_store=metanet_store)
        if on_primed is not None:
            on_primed(remaining)
        stopped = search_trials(context, study, callbacks=callbacks, should_stop=should_stop)
    if not stopped:
        stopped = _await_other_workers(study, storage, should_stop)
    trials = [describe_trial(t) for t in study.get_trials(deepcopy=False)]
    result = SearchResult(study_name, trials, dense=None, stopped=stopped)
    complete = [t for t in trials if t.state == "complete" and t.arch is not None]
    if not complete:
        if stopped:
            return result
        raise SearchError("no trial completed: every candidate failed to score")
    result.pareto = pareto_front(complete)
    pool = [t for t in complete if t.number in set(result.pareto)] if multi else complete
    result.best = best_entry(max(pool, key=_score), verified=None)
    if spec.verify_top_k and not stopped:
        # The baselines are verified beside the proxy's favourites, so the report compares them
        # and the reported best is never worse than a baseline on the verified metric.
        # Finalists climb a successive-halving ladder of held-out prefixes; the baselines are
        # verified on every rung (search.ladder).
        seeds = [t for t in pool if t.origin.startswith("seed:")]
        finalists = [t for t in _finalists(pool, spec.verify_top_k) if not t.origin.startswith("seed:")]
        ladder = verify_finalists(context, verifier, finalists, seeds, on_verify=on_verify)
        result.dense, result.verified, result.ladder = ladder.dense, dict(ladder.final), ladder.rungs
        winner = min(
            (t for t in pool if t.number in result.verified), key=lambda t: (result.verified[t.number].value, t.number)
        )
        result.best = best_entry(winner, verified=result.verified[winner.number])
    if not stopped:
        result.trust = trust_audit(
            context, auditor, complete, store=metanet_store, job=study_name, proxy_state=proxy_state
        )
    return result


def _await_other_workers(
    study: optuna.Study,
    storage: str | BaseStorage | None,
    should_stop: Callable[[], bool] | None,
    *,
    poll_s: float = 0.5,
) -> bool:
    """Wait until no trial of the study is running (other workers finish theirs; a dead worker's
    trial is failed by its missed heartbeats). Returns whether ``should_stop`` stopped the wait."""
    if not isinstance(storage, BaseStorage) or not is_heartbeat_enabled(storage):
        return False  # no heartbeats, so no other worker (and no way to tell a dead one)
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if should_stop is not None and should_stop():
            return True
        optuna.storages.fail_stale_trials(study)
        time.sleep(poll_s)
    return False


_STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.FAIL: "failed",
    TrialState.PRUNED: "pruned",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def describe_trial(trial: FrozenTrial) -> TrialInfo:
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    values = list(trial.values) if trial.state == TrialState.COMPLETE and trial.values is not None else None
    value = values[0] if values else None
    return TrialInfo(
        number=trial.number,
        state=_STATE_NAMES[trial.state],
        origin=str(attrs.get("origin", "sampler")),
        value=value if value is None or math.isfinite(value) else None,
        values=values if values is not None and len(values) > 1 else None,
        arch=attrs.get("arch"),
        param_count=attrs.get("param_count"),
        param_ratio=attrs.get("param_ratio"),
        scores=dict(attrs.get("scores", {})),
        timings=dict(attrs.get("timings", {})),
        duration_s=duration,
        error=_failure(trial) if trial.state == TrialState.FAIL else None,
    )


def _failure(trial: FrozenTrial) -> str:
    if "error" in trial.user_attrs:  # set by the objective for a candidate its proxy could not score
        return str(trial.user_attrs["error"])
    # Any other failure ends the job; a failed trial in a running job lost its worker's heartbeat.
    return "the worker running this trial stopped; its configuration is retried"


def pareto_front(trials: Sequence[TrialInfo]) -> list[int]:
    """Numbers of the trials no other trial beats on both score (higher) and parameter ratio (lower)."""
    points = [(t.number, _score(t), t.param_ratio or 0.0) for t in trials]
    front = []
    for number, score, ratio in points:
        dominated = any((s >= score and r <= ratio) and (s > score or r < ratio) for n, s, r in points if n != number)
        if not dominated:
            front.append(number)
    return sorted(front)


def _score(trial: TrialInfo) -> float:
    return trial.value if trial.value is not None else -math.inf


def _finalists(complete: list[TrialInfo], k: int) -> list[TrialInfo]:
    """The k best distinct architectures by proxy score."""
    chosen: list[TrialInfo] = []
    seen: set[str] = set()
    for trial in sorted(complete, key=lambda t: (-_score(t), t.number)):
        key = ArchConfig.from_dict(trial.arch).to_json()  # type: ignore[arg-type]
        if key not in seen:
            seen.add(key)
            chosen.append(trial)
        if len(chosen) == k:
            break
    return chosen


def best_entry(trial: TrialInfo, *, verified: Verification | None) -> dict[str, Any]:
    return {
        "trial_number": trial.number,
        "origin": trial.origin,
        "arch": trial.arch,
        "param_count": trial.param_count,
        "param_ratio": trial.param_ratio,
        "score": trial.value,
        "scores": trial.scores,
        "verified": verified.to_dict() if verified is not None else None,
    }


@torch.no_grad()
def _layer_signals(loaded: LoadedModel, stats: DenseStats, wanda: Importance | None) -> LayerSignals:
    adapter = loaded.adapter
    if wanda is None:
        wanda = compute_importance(adapter, stats, "wanda")
    attention = torch.stack([groups.sum() for groups in wanda.head_groups])
    outliers = []
    for layer in range(adapter.shape.num_layers):
        above, total = 0, 0
        for block in (Block(layer, "attention"), Block(layer, "mlp")):
            for name, module in adapter.linears(block).items():
                weight = adapter.weight(module).detach()
                norms = stats.inputs[(layer, block.kind, name)].norm.to(weight.device)
                scores = weight.float().abs() * norms  # (out, in), on the model's device
                above += int((scores > _OUTLIER_MULTIPLE * scores.mean()).sum())
                total += scores.numel()
        outliers.append(above / total)
    return LayerSignals(stats.block_influence, attention / attention.mean(), torch.tensor(outliers))
