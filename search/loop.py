"""The study loop: ask, evaluate, tell, call back, until the study holds enough complete trials.

What Optuna's ``study.optimize`` does per trial, with Optuna's ask-and-tell interface, minus what a
search with a hundred parameters per trial cannot afford between GPU steps: a deep copy of the
trial for every callback, a log line that looks up the best trial, a stale-trial query per trial
(here at most once per heartbeat interval). Measured by ``benchmarks/orchestration.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import optuna

# Optuna's own heartbeat helpers: the one place that says whether a storage runs heartbeats, and
# the thread that beats for a running trial. The loop needs both, as ``study.optimize`` does.
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

Evaluate = Callable[[optuna.Trial], float | Sequence[float]]
TrialCallback = Callable[[optuna.Study, FrozenTrial], None]


def complete_count(study: optuna.Study) -> int:
    """Complete trials of the study, every worker's (a read of what changed since the last one)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def run_trials(
    study: optuna.Study,
    evaluate: Evaluate,
    *,
    max_trials: int,
    complete_target: int,
    callbacks: Sequence[TrialCallback] = (),
    catch: tuple[type[Exception], ...] = (),
    should_stop: Callable[[], bool] | None = None,
) -> bool:
    """Run at most ``max_trials`` trials, until the study holds ``complete_target`` complete ones.

    An exception in ``catch`` fails its trial and the loop goes on; any other fails its trial and is
    raised. ``callbacks`` receive each finished trial (one shared copy: they must not change it);
    ``should_stop`` is asked after each. Returns whether ``should_stop`` ended the loop."""
    heartbeats = is_heartbeat_enabled(study._storage)
    stale_every = (study._storage.get_heartbeat_interval() or 0) if heartbeats else 0
    stale_checked = -float("inf")
    for _ in range(max_trials):
        if complete_count(study) >= complete_target:
            return False
        if heartbeats and time.monotonic() - stale_checked >= stale_every:
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial is failed and queued again
            stale_checked = time.monotonic()
        finished = _run_one(study, evaluate, catch)
        for callback in callbacks:
            callback(study, finished)
        if should_stop is not None and should_stop():
            return True
    return False


def _run_one(study: optuna.Study, evaluate: Evaluate, catch: tuple[type[Exception], ...]) -> FrozenTrial:
    trial = study.ask()
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            values = evaluate(trial)
        except optuna.TrialPruned:
            return study.tell(trial, state=TrialState.PRUNED)
        except catch as error:
            log.warning("trial %d failed: %s", trial.number, error)
            return study.tell(trial, state=TrialState.FAIL)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
    finished = study.tell(trial, values)
    if finished.state == TrialState.FAIL:  # a value Optuna cannot store (NaN): failed, and said why
        log.warning("trial %d failed: its value %r is not a finite number", trial.number, values)
    return finished
