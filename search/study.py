"""The Optuna driver: sample an allocation, repair it to the budget, select units, score.

``prepare`` builds what every trial reuses (tokens, dense statistics, importance, the proxy's dense
reference); ``run_search`` runs or resumes the study, verifies the finalists and returns the
result. Storage, callbacks and the stop condition come in as arguments: the library knows nothing
of the service that may be driving it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from search import baselines
from search.arch import ArchConfig, ModelShape
from search.calibration import TokenSet, build_token_set
from search.errors import ProxyError, SearchError
from search.loading import LoadedModel
from search.proxies import Proxy, create_proxy
from search.repair import Proposal, repair
from search.selection import Importance, Selection, select_units, wanda_importance
from search.spec import JobSpec
from search.stats import DenseStats, collect_stats
from search.verify import Verification, verify

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]

DEFAULT_BATCH_SIZE = 8


@dataclass
class SearchContext:
    """Everything trials share. Built once per (model, calibration, proxy) and reused across jobs."""

    loaded: LoadedModel
    spec: JobSpec
    tokens: TokenSet
    stats: DenseStats
    importance: Importance
    proxy: Proxy
    prepare_seconds: float

    @property
    def shape(self) -> ModelShape:
        return self.loaded.adapter.shape


@dataclass(frozen=True)
class TrialInfo:
    """A finished trial as the service and the CLI show it."""

    number: int
    state: str
    origin: str
    value: float | None
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
    best: dict[str, Any] | None = None
    stopped: bool = False


def prepare(loaded: LoadedModel, spec: JobSpec, *, batch_size: int = DEFAULT_BATCH_SIZE) -> SearchContext:
    started = time.perf_counter()
    tokens = build_token_set(loaded.tokenizer, spec.calibration)
    stats_key = ("stats", tokens.digest)
    if stats_key not in loaded.cache:
        stats = collect_stats(loaded.adapter, tokens, batch_size=batch_size)
        loaded.cache[stats_key] = (stats, wanda_importance(loaded.adapter, stats))
    stats, importance = loaded.cache[stats_key]
    seed = spec.seed or 0
    proxy_key = ("proxy", spec.proxy, tokens.digest, seed)
    if proxy_key not in loaded.cache:
        loaded.cache[proxy_key] = create_proxy(spec.proxy, loaded.adapter, tokens, seed=seed, batch_size=batch_size)
    return SearchContext(
        loaded, spec, tokens, stats, importance, loaded.cache[proxy_key], time.perf_counter() - started
    )


def make_storage(url: str, *, heartbeat_interval: int = 30, grace_period: int = 120, max_retry: int = 2) -> RDBStorage:
    """RDB storage with heartbeats, so a trial whose worker died is failed and retried."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 30}
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
    )


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


def candidate(context: SearchContext, proposal: Proposal) -> Selection:
    spec = context.spec
    arch = repair(context.shape, proposal, spec.target.param_ratio, ffn_alignment=spec.search_space.ffn_alignment)
    return select_units(context.importance, arch, context.shape.group_size)


def run_search(
    context: SearchContext,
    *,
    study_name: str,
    storage: str | BaseStorage | None = None,
    callbacks: Sequence[TrialCallback] = (),
    should_stop: Callable[[], bool] | None = None,
    on_verify: Callable[[int, int], None] | None = None,
) -> SearchResult:
    spec = context.spec
    shape = context.shape
    dense_params = shape.dense_params()
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=create_sampler(spec.sampler, spec.seed),
        direction="maximize",
        load_if_exists=True,
    )
    if not study.trials:
        study.set_metric_names([spec.proxy])
        study.set_user_attr("spec", spec.model_dump(mode="json"))
        study.set_user_attr("dense_params", dense_params)
        study.set_user_attr("calibration_digest", context.tokens.digest)
        _enqueue_baselines(study, context)

    def objective(trial: optuna.Trial) -> float:
        started = time.perf_counter()
        proposal = Proposal(
            tuple(trial.suggest_float(f"attention.{i}", 0.0, 1.0) for i in range(shape.num_layers)),
            tuple(trial.suggest_float(f"mlp.{i}", 0.0, 1.0) for i in range(shape.num_layers)),
        )
        selection = candidate(context, proposal)
        param_count = shape.count_params(selection.arch)
        trial.set_user_attr("arch", selection.arch.to_dict())
        trial.set_user_attr("param_count", param_count)
        trial.set_user_attr("param_ratio", param_count / dense_params)
        repaired = time.perf_counter()
        score = context.proxy.score(selection)
        scored = time.perf_counter()
        trial.set_user_attr("scores", {context.proxy.name: score.value, **score.extras})
        trial.set_user_attr("timings", {"realise_s": repaired - started, "score_s": scored - repaired})
        return score.value

    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    remaining = spec.n_trials - len(finished)
    stop_callbacks: list[TrialCallback] = [MaxTrialsCallback(spec.n_trials, states=(TrialState.COMPLETE,))]
    stopped = False

    def check_stop(study: optuna.Study, _trial: FrozenTrial) -> None:
        nonlocal stopped
        if should_stop is not None and should_stop():
            stopped = True
            study.stop()

    if should_stop is not None and should_stop():
        stopped = True
    elif remaining > 0:
        # Failed trials (a non-finite score) do not count towards n_trials, but are bounded.
        study.optimize(
            objective,
            n_trials=remaining + max(3, spec.n_trials // 10),
            callbacks=[*callbacks, *stop_callbacks, check_stop],
            catch=(ProxyError,),
            gc_after_trial=False,
        )
    trials = [describe_trial(t) for t in study.get_trials(deepcopy=False)]
    result = SearchResult(study_name, trials, dense=None, stopped=stopped)
    complete = [t for t in trials if t.state == "complete" and t.arch is not None]
    if not complete:
        if stopped:
            return result
        raise SearchError("no trial completed: every candidate failed to score")
    result.best = best_entry(max(complete, key=lambda t: t.value or -math.inf), verified=None)
    if spec.verify_top_k and not stopped:
        finalists = _finalists(complete, spec.verify_top_k)
        selections = [
            select_units(context.importance, ArchConfig.from_dict(t.arch), shape.group_size)  # type: ignore[arg-type]
            for t in finalists
        ]
        dense, checks = verify(context.loaded.adapter, context.tokens.heldout, selections, on_batch=on_verify)
        result.dense = dense
        result.verified = {t.number: check for t, check in zip(finalists, checks, strict=True)}
        winner = min(finalists, key=lambda t: result.verified[t.number].kl)
        result.best = best_entry(winner, verified=result.verified[winner.number])
    return result


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
    value = trial.value if trial.state == TrialState.COMPLETE else None
    return TrialInfo(
        number=trial.number,
        state=_STATE_NAMES[trial.state],
        origin=str(attrs.get("origin", "sampler")),
        value=value if value is None or math.isfinite(value) else None,
        arch=attrs.get("arch"),
        param_count=attrs.get("param_count"),
        param_ratio=attrs.get("param_ratio"),
        scores=dict(attrs.get("scores", {})),
        timings=dict(attrs.get("timings", {})),
        duration_s=duration,
        error=str(trial.system_attrs.get("fail_reason")) if trial.state == TrialState.FAIL else None,
    )


def _enqueue_baselines(study: optuna.Study, context: SearchContext) -> None:
    shape = context.shape
    seeds = {
        "seed:uniform": baselines.uniform(shape),
        "seed:block_influence": baselines.block_influence_depth(
            shape, context.stats.block_influence, context.spec.target.param_ratio
        ),
    }
    for origin, proposal in seeds.items():
        params = {f"attention.{i}": v for i, v in enumerate(proposal.attention)}
        params |= {f"mlp.{i}": v for i, v in enumerate(proposal.mlp)}
        study.enqueue_trial(params, user_attrs={"origin": origin}, skip_if_exists=True)


def _finalists(complete: list[TrialInfo], k: int) -> list[TrialInfo]:
    """The k best distinct architectures by proxy score."""
    chosen: list[TrialInfo] = []
    seen: set[str] = set()
    for trial in sorted(complete, key=lambda t: (-(t.value or -math.inf), t.number)):
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
