"""The single-process trial loop: the job's proxy, its study, and the objective every trial runs.

A trial samples an allocation, repairs it to the budget, selects units and scores the candidate
with the job's proxy. Single-objective jobs maximise the proxy score at the budget, which is also
declared to Optuna as a constraint (``Trial.set_constraint``), so samplers and optuna-dashboard see
feasibility. Multi-objective jobs (``objectives: ["score", "params"]``) sample the budget too,
between ``min_param_ratio`` and ``param_ratio``, and search the Pareto front of score against
parameter ratio. Latency jobs (``search.latency_budget``) also record each candidate's predicted
latency and a second constraint, ``latency``; ``objectives: ["score", "latency"]`` samples a latency
budget instead of a parameter budget and trades the score off against predicted latency.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage

from search.candidates import SearchContext
from search.errors import BudgetInfeasible, ProxyError
from search.fidelity import TokenLadder
from search.latency_budget import TrialLatency, sampled_budget, second_objective
from search.loop import TrialCallback, complete_count, run_trials
from search.proxies import Proxy, create_proxy
from search.proxies.base import Scores
from search.repair import DEFAULT_TOLERANCE
from search.samplers import SamplerBuild, create_sampler
from search.selection import Selection
from search.spec import JobSpec


@dataclass(frozen=True)
class SearchHooks:
    """What a caller (the service's worker, the CLI) hears from a search, and how it stops one.

    ``on_trial``: Optuna callbacks, called after every trial of this process. ``should_stop``: asked
    before the search and after every trial. ``on_primed(remaining)``: the study is ready for other
    workers (``search.coordination.search_chunk``). ``on_verify(done, total)``: the finalists'
    verification progresses. ``on_recover(done, total)``: recovery's optimizer steps, over all
    finalists (``search.recovery``), which also asks ``should_stop`` while it trains.
    """

    on_trial: Sequence[TrialCallback] = ()
    should_stop: Callable[[], bool] | None = None
    on_primed: Callable[[int], None] | None = None
    on_verify: Callable[[int, int], None] | None = None
    on_recover: Callable[[int, int], None] | None = None

    def stop_requested(self) -> bool:
        return self.should_stop is not None and self.should_stop()


NO_HOOKS = SearchHooks()


def job_proxy(context: SearchContext) -> Proxy:
    """The job's proxy, built once per (model, proxy, calibration, seed) and kept with the model."""
    spec = context.spec
    return named_proxy(context, spec.proxy if isinstance(spec.proxy, str) else tuple(spec.proxy))


def named_proxy(context: SearchContext, name: str | tuple[str, ...], **options: Any) -> Proxy:
    """The proxy ``name`` built as the job's is (its model, calibration, seed and artifacts), so a
    proxy the job also uses is the same object (the neighbourhood audit compares them); ``options``
    as ``create_proxy``'s."""
    spec = context.spec
    return create_proxy(
        name,
        context.loaded.adapter,
        context.tokens,
        seed=spec.seed or 0,
        batch_size=context.batch_size,
        stats=context.stats,
        artifacts=context.loaded.artifacts,
        **options,
    )


def job_sampler(context: SearchContext, seed: int | None, *, trials_done: int = 0) -> optuna.samplers.BaseSampler:
    """The job's sampler; one that knows the space keys a trial's parameters by the candidate repair
    makes of them at the job's budget. ``trials_done``: what the study already holds (a resume)."""
    _, high = context.ratio_range()

    def candidate_key(params: Mapping[str, Any]) -> str:
        return context.arch(context.space.proposal(params), high).to_json()

    return create_sampler(context.spec.sampler, SamplerBuild(seed, context.shape, high, candidate_key, trials_done))


def open_study(context: SearchContext, *, study_name: str, storage: str | BaseStorage | None = None) -> optuna.Study:
    """Create the job's study (metric names, provenance, baseline seeds) or load it as it is."""
    spec = context.spec
    multi = spec.multi_objective
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=job_sampler(context, spec.seed),
        directions=["maximize", "minimize"] if multi else ["maximize"],
        load_if_exists=True,
    )
    if study.trials:  # resumed: a seeded sampler must not draw the study's first candidates again
        study.sampler = job_sampler(context, spec.seed, trials_done=len(study.trials))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.proxy_label, second_objective(spec)] if multi else [spec.proxy_label])
        study.set_user_attr("spec", spec.model_dump(mode="json"))
        study.set_user_attr("dense_params", context.shape.dense_params())
        study.set_user_attr("calibration_digest", context.tokens.digest)
        for origin, params in context.space.seeds(context.seed_ratio()).items():
            if multi:
                params = params | sampled_budget(context)
            study.enqueue_trial(params, user_attrs={"origin": origin}, skip_if_exists=True)
    return study


def remaining_trials(study: optuna.Study, spec: JobSpec) -> int:
    """Trials still to complete, counted over every worker of the study."""
    return spec.n_trials - complete_count(study)


def stored_complete_trials(storage: str | BaseStorage, study_name: str) -> int:
    """Complete trials of study ``study_name`` in ``storage``; 0 when there is no such study yet."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # Optuna's answer for a study name the storage does not hold
        return 0
    return complete_count(study)  # what a resume keeps (search.resume.resumed_spec)


def search_trials(
    context: SearchContext,
    proxy: Proxy,
    study: optuna.Study,
    *,
    max_trials: int | None = None,
    hooks: SearchHooks = NO_HOOKS,
    lookahead: bool = False,
    batch: int = 1,
) -> bool:
    """Run trials until the study holds ``n_trials`` complete ones, counting every worker's (or this
    call has run ``max_trials``). Several processes may do this on one study at once: the storage
    hands each waiting seed to one of them and the sampler sees the others' running trials.
    ``lookahead`` proposes the next candidate in a second thread while the device scores the current
    one (``search.loop`` says why it is off by default; a proxy that launches its candidates, TraceNAS
    on a GPU, overlaps without it); ``batch`` trials are scored together, in one
    pass where the proxy can (``TraceNAS`` replaying: several candidates in one graph).
    Returns whether ``hooks.should_stop`` stopped it (the caller asked before; this asks after every trial)."""
    spec = context.spec
    remaining = remaining_trials(study, spec)
    if remaining <= 0:
        return False
    # Failed trials (a non-finite score) do not count towards n_trials, but are bounded.
    budget = remaining + max(3, spec.n_trials // 10)
    return run_trials(
        study,
        _Objective(context, proxy),
        max_trials=budget if max_trials is None else min(budget, max_trials),
        complete_target=spec.n_trials,
        callbacks=hooks.on_trial,
        catch=(ProxyError, BudgetInfeasible),
        should_stop=hooks.should_stop,
        lookahead=lookahead,
        batch=batch,
    )


@dataclass(frozen=True)
class _Candidate:
    """A trial's proposal: the candidate, its size, and what sampling and realising it took."""

    selection: Selection
    second: float  # a two-objective job's second value (parameter ratio or predicted latency)
    timings: dict[str, float]


_Outcome = float | tuple[float, float] | ProxyError


class _Objective:
    """One trial: sample, repair to the budget, select (``propose``), then score (``score``); the
    trial's attributes say what happened."""

    def __init__(self, context: SearchContext, proxy: Proxy) -> None:
        self.context, self.proxy = context, proxy
        self.ladder = TokenLadder(proxy, context.spec)  # the token schedule of a multi-fidelity proxy
        self.multi = context.spec.multi_objective
        self.dense_params = context.shape.dense_params()
        self.low, self.high = context.ratio_range()
        self.latency = TrialLatency(context) if context.latency is not None else None

    def propose(self, trial: optuna.Trial) -> _Candidate:
        started = time.perf_counter()
        proposal = self.context.space.suggest(trial)
        latency_budget = self.latency.suggest(trial) if self.latency is not None else None
        sampled_params = self.multi and not self.context.spec.latency_objective
        budget = trial.suggest_float("param_ratio", self.low, self.high) if sampled_params else self.high
        sampled = time.perf_counter()
        try:
            selection = self.context.candidate(proposal, budget, latency_budget)
        except BudgetInfeasible as error:
            # A latency budget this proposal's shape cannot meet at any scale (a uniform width where
            # a kept layer's fixed cost dominates): the trial fails, said why; the search goes on.
            trial.set_user_attr("error", str(error))
            raise
        param_count = self.context.shape.count_params(selection.arch)
        realised = time.perf_counter()
        param_ratio = self._record_candidate(trial, selection, param_count, budget, latency_budget)
        # A two-objective job's second value: the predicted latency, or the parameter ratio.
        second = trial.user_attrs["latency_ms"] if self.context.spec.latency_objective else param_ratio
        return _Candidate(selection, second, {"sample_s": sampled - started, "realise_s": realised - sampled})

    def score(self, trial: optuna.Trial, candidate: _Candidate) -> float | tuple[float, float]:
        outcome = self.score_many([trial], [candidate])[0]
        if isinstance(outcome, ProxyError):
            raise outcome
        return outcome

    def score_many(self, trials: Sequence[optuna.Trial], candidates: Sequence[_Candidate]) -> list[_Outcome]:
        """The candidates' objective values, in one call of the proxy, which may score them in one pass
        (``TraceNAS.score_many``); each trial's ``score_s`` is its share of the call. A candidate
        without a score gets its ``ProxyError``, said on its trial."""
        scoring = time.perf_counter()
        scores = self.ladder.score_many(trials, [candidate.selection for candidate in candidates])
        return self._outcomes(trials, candidates, scores, time.perf_counter() - scoring)

    def launch(
        self, trials: Sequence[optuna.Trial], candidates: Sequence[_Candidate]
    ) -> Callable[[], list[_Outcome]] | None:
        """``score_many``, started on the device where the proxy can (``Proxy.launch``); ``score_s`` is
        then the host's time starting it and waiting for it, the time the loop spends on it."""
        started = time.perf_counter()
        waiting = self.ladder.launch(trials, [candidate.selection for candidate in candidates])
        if waiting is None:
            return None
        launched = time.perf_counter() - started

        def outcomes() -> list[_Outcome]:
            reading = time.perf_counter()
            scores = waiting()
            return self._outcomes(trials, candidates, scores, launched + time.perf_counter() - reading)

        return outcomes

    def _outcomes(
        self,
        trials: Sequence[optuna.Trial],
        candidates: Sequence[_Candidate],
        scores: Scores,
        score_s: float,
    ) -> list[_Outcome]:
        share = score_s / len(candidates)
        outcomes: list[_Outcome] = []
        for trial, candidate, score in zip(trials, candidates, scores, strict=True):
            if isinstance(score, ProxyError):
                trial.set_user_attr("error", str(score))  # Optuna 5 keeps no failure reason of its own
                outcomes.append(score)
                continue
            trial.set_user_attr("scores", {self.proxy.name: score.value, **score.extras})
            trial.set_user_attr("timings", candidate.timings | {"score_s": share} | score.timings)
            outcomes.append((score.value, candidate.second) if self.multi else score.value)
        return outcomes

    def _record_candidate(
        self, trial: optuna.Trial, selection: Selection, param_count: int, budget: float, latency_budget: float | None
    ) -> float:
        """Write the candidate's architecture, size and predicted latency, and how far it is from the
        budgets; returns its parameter ratio."""
        param_ratio = param_count / self.dense_params
        trial.set_user_attr("arch", selection.arch.to_dict())
        trial.set_user_attr("param_count", param_count)
        trial.set_user_attr("param_ratio", param_ratio)
        # Feasible (≤ 0) within the tolerance of the budget; with a latency budget, the parameter budget is a cap.
        miss = param_ratio - budget if self.latency is not None else abs(param_ratio - budget)
        violations = {"budget": miss / budget - DEFAULT_TOLERANCE}
        if self.latency is not None:
            violations |= self.latency.record(trial, selection.arch, latency_budget)
        for name, violation in violations.items():
            trial.set_constraint(name, violation)
        _write_dashboard_constraint(trial, list(violations.values()))
        return param_ratio


def _write_dashboard_constraint(trial: optuna.Trial, violations: list[float]) -> None:
    """Samplers read Optuna 5's named constraint; optuna-dashboard (0.21) still reads the plain
    "constraints" system attribute, which Optuna 5 no longer writes and has no public setter for:
    this is the one place that uses the trial's private id."""
    trial.storage.set_trial_system_attr(trial._trial_id, "constraints", violations)
