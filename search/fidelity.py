"""The token schedule inside the search: a trial of a multi-fidelity proxy (one with ``Proxy.rungs``,
today ``kl``) is scored on a few calibration sequences first, and only promising trials on more
(asynchronous successive halving, as ASHA; EvoPress's multi-step selection is the same idea).

- **Rungs** (``job_rungs``): the job's ``token_schedule`` gives the first rung's calibration
  sequences (default a quarter of them, never fewer than the proxy needs: 1 for decoders, 8 for
  encoders); each rung multiplies them by ``growth``; the last scores all of them.
- **Promotion** (``promoted``): after each rung the trial reports its score as an Optuna
  intermediate value at step = the tokens scored (optuna-dashboard draws the curve), and goes on
  when its score is in the top ``promote`` share of the study's trials scored on that rung, itself
  included (rank ≤ ⌈share · n⌉; every worker's trials, read from the study). Seeds and the study's
  first ``full_trials`` trials go through every rung unconditionally: they are what later trials
  are compared with and scaled by.
- **Comparable values** (``full_scale``): a multi-fidelity proxy scores minus a loss that is 0 for
  the dense model (−KL), so a trial stopped below the top rung ends with its rung score times the
  median ratio (top-rung score / this rung's score) over the study's trials that reached the top
  rung and have a non-zero score on this rung; 1 while there is none. The value is fixed when the
  trial ends; later trials do not rewrite it. The ratio applied is in the trial's scores
  (``fidelity_ratio``), and the user attribute ``tokens`` says how many tokens scored the trial.
- **Off** for single-fidelity proxies, with ``token_schedule.enabled`` false, and for Pareto
  (multi-objective) jobs, which compare candidates of different sizes that no share of one rung
  ranks fairly (and Optuna keeps no intermediate values for them): every trial on all sequences.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.proxies import Proxy, ProxyScore
from search.proxies.base import Scores, or_error
from search.selection import Selection
from search.spec import JobSpec

_PEER_STATES = (TrialState.COMPLETE, TrialState.RUNNING)


def job_rungs(proxy: Proxy, spec: JobSpec) -> tuple[int, ...]:
    """The calibration sequences of each rung of ``spec``'s schedule for ``proxy``; ``()`` when every
    trial is scored in full (see the module docstring)."""
    schedule, bounds = spec.token_schedule, proxy.rungs
    if not bounds or not schedule.enabled or spec.multi_objective:
        return ()
    fewest, every = bounds[0], bounds[-1]
    first = schedule.first_sequences if schedule.first_sequences is not None else every // 4
    rungs = [min(max(first, fewest), every)]
    while rungs[-1] < every:
        rungs.append(min(rungs[-1] * schedule.growth, every))
    return tuple(rungs) if len(rungs) > 1 else ()


def promoted(value: float, peers: Sequence[float], share: float) -> bool:
    """Whether ``value`` is in the top ``share`` of ``peers`` plus itself (higher is better; ties favour it)."""
    better = sum(1 for peer in peers if peer > value)
    return better < math.ceil(share * (len(peers) + 1))


def full_scale(value: float, step: int, top: int, trials: Sequence[FrozenTrial]) -> tuple[float, float]:
    """``value`` (a score at ``step`` tokens) on the scale of the top rung (``top`` tokens), and the
    ratio used: the median of top / step over ``trials`` that reported both (a zero at ``step`` excluded)."""
    ratios = [
        t.intermediate_values[top] / t.intermediate_values[step]
        for t in trials
        if top in t.intermediate_values and t.intermediate_values.get(step, 0.0) != 0.0
    ]
    ratio = statistics.median(ratios) if ratios else 1.0
    return value * ratio, ratio


def _with_tokens(trials: Sequence[optuna.Trial], scores: Scores) -> Scores:
    """``scores``, the tokens that scored each said on its trial."""
    for trial, score in zip(trials, scores, strict=True):
        if isinstance(score, ProxyScore):
            _say_tokens(trial, score)
    return scores


def _say_tokens(trial: optuna.Trial, score: ProxyScore) -> None:
    if score.tokens is not None:
        trial.set_user_attr("tokens", score.tokens)


class TokenLadder:
    """Scores a trial's candidate with the job's proxy, rung by rung when the job has a schedule."""

    def __init__(self, proxy: Proxy, spec: JobSpec) -> None:
        self.proxy = proxy
        self.rungs = job_rungs(proxy, spec)
        self.share = spec.token_schedule.promote
        self.full_trials = spec.token_schedule.full_trials

    def score(self, trial: optuna.Trial, selection: Selection) -> ProxyScore:
        """The trial's score, full-scale; reports each rung and records ``tokens`` on the trial."""
        if self.rungs:
            with self.proxy.hold(selection):  # swapped in once for every rung it climbs
                score = self._climb(trial, selection)
        else:
            score = self.proxy.score(selection)
        _say_tokens(trial, score)
        return score

    def score_many(self, trials: Sequence[optuna.Trial], selections: Sequence[Selection]) -> Scores:
        """``score`` of each trial's candidate, or why it has none. Without a schedule, one call of the
        proxy's ``score_many``, which may score them all in one pass; with one, each climbs its rungs."""
        if self.rungs:
            return [or_error(lambda t=t, s=s: self.score(t, s)) for t, s in zip(trials, selections, strict=True)]
        return _with_tokens(trials, self.proxy.score_many(selections))

    def launch(self, trials: Sequence[optuna.Trial], selections: Sequence[Selection]) -> Callable[[], Scores] | None:
        """``score_many`` started on the device where the proxy can (``Proxy.launch``); a schedule's
        rungs are climbed in the caller's time."""
        waiting = None if self.rungs else self.proxy.launch(selections)
        return None if waiting is None else lambda: _with_tokens(trials, waiting())

    def _climb(self, trial: optuna.Trial, selection: Selection) -> ProxyScore:
        origin = str(trial.user_attrs.get("origin", "sampler"))
        unconditional = origin.startswith("seed:") or trial.number < self.full_trials
        peers: list[FrozenTrial] | None = None
        for sequences in self.rungs[:-1]:
            score = self.proxy.score_on(selection, sequences)
            step = _report(trial, score, sequences)
            if unconditional:
                continue
            # Read once per trial, not per rung: a read of the study also reloads every trial still
            # running in other workers, the largest cost a second worker adds (docs/performance.md).
            peers = self._peers(trial) if peers is None else peers
            scored = [t.intermediate_values[step] for t in peers if step in t.intermediate_values]
            if not promoted(score.value, scored, self.share):
                return self._stopped(score, step, peers)
        score = self.proxy.score_on(selection, self.rungs[-1])
        _report(trial, score, self.rungs[-1])
        return score

    def _stopped(self, score: ProxyScore, step: int, peers: list[FrozenTrial]) -> ProxyScore:
        """A trial stopped at ``step`` tokens: its score put on the full scale by the top-rung trials."""
        # A trial that reported every rung reached the top: its last step is the top rung's tokens.
        top = next((max(t.intermediate_values) for t in peers if len(t.intermediate_values) == len(self.rungs)), None)
        value, ratio = full_scale(score.value, step, top, peers) if top is not None else (score.value, 1.0)
        return replace(score, value=value, extras=score.extras | {"fidelity_ratio": ratio})

    @staticmethod
    def _peers(trial: optuna.Trial) -> list[FrozenTrial]:
        """The study's other trials that may have rung scores: finished, or running in any worker."""
        return [t for t in trial.study.get_trials(deepcopy=False, states=_PEER_STATES) if t.number != trial.number]


def _report(trial: optuna.Trial, score: ProxyScore, sequences: int) -> int:
    """Report a rung's score at step = its tokens (the sequences for a proxy that counts none)."""
    step = score.tokens if score.tokens is not None else sequences
    trial.report(score.value, step=step)
    return step
