"""The study loop: ask, propose, score, tell, call back, until the study holds enough complete trials.

What Optuna's ``study.optimize`` does per trial, with Optuna's ask-and-tell interface, minus what a
search with a hundred parameters per trial cannot afford between GPU steps: a deep copy of the
trial for every callback, a log line that looks up the best trial, a stale-trial query per trial
(here at most once per heartbeat interval). Measured by ``benchmarks/orchestration.py``.

A trial has two stages: ``propose`` (the CPU's: sample, repair, select) and ``score`` (the
device's). Trials run in rounds of ``batch`` (default 1): asked and proposed one after another, then
scored in one call of the objective's ``score_many`` (``TraceNAS`` replays them in one graph), then
told.

An objective that can start a round on the device and return at once (``LaunchingObjective``:
TraceNAS on a GPU, replaying its graph or queuing a gathered candidate's kernels) is kept busy:
while the device scores a round, the loop proposes the next one, and once the round's scores are
read it starts the next one before telling the finished trials, so the device waits only for the
scores to be read and the next round to be started.
Otherwise, ``lookahead`` proposes the next round in a second thread while the device scores the
current one. Either way the next round is proposed while the current one is running and told only
once the proposals are made, so a seeded search draws the same candidates on every run (one round
later than a search that does not look ahead: the sampler has not seen the current round's scores).

Lookahead by a thread is off by default. Measured on an H200 (docs/performance.md), scoring a
candidate eagerly is bound by the host launching kernels, not by the GPU, and every kernel launch
gives up the GIL: a proposing thread then holds it for up to the interpreter's switch interval (5 ms),
so the candidate's forward took 1.4-3.6x as long and the trial 1.1-2.6x, more than proposing costs.
With lookahead the switch interval is 0.5 ms (``LOOKAHEAD_SWITCH_S``). A launched round needs no
thread: the host queues its work (one replay, or a gathered candidate's kernels) before proposing,
and waits for the scores without the GIL.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import optuna
from optuna.exceptions import UpdateFinishedTrialError

# Optuna's own helper: the one place that says whether a storage runs heartbeats.
from optuna.storages._heartbeat import is_heartbeat_enabled

# What ``study.tell`` and ``study.optimize`` call to finish a trial, minus tell's deep copy of it.
from optuna.study._tell import _tell_with_warning
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)
LOOKAHEAD_SWITCH_S = 0.0005  # the GIL switch interval while a proposing thread runs beside scoring (default 5 ms)

# ``study.ask`` warns that heartbeats are meant for ``study.optimize``: this loop beats for its trials as that does.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

P = TypeVar("P")
TrialCallback = Callable[[optuna.Study, FrozenTrial], None]


class StagedObjective(Protocol[P]):
    def propose(self, trial: optuna.Trial) -> P:
        """The trial's candidate: sampled, repaired, selected, recorded on the trial (CPU work)."""
        ...

    def score(self, trial: optuna.Trial, proposal: P) -> float | Sequence[float]:
        """The candidate's objective values (the device's work)."""
        ...


Outcome = float | Sequence[float] | Exception  # a candidate's objective values, or why it has none


@runtime_checkable
class BatchObjective(StagedObjective[P], Protocol[P]):
    def score_many(self, trials: Sequence[optuna.Trial], proposals: Sequence[P]) -> Sequence[Outcome]:
        """Several candidates' objective values, in order, or the exception that failed each one."""
        ...


@runtime_checkable
class LaunchingObjective(StagedObjective[P], Protocol[P]):
    def launch(self, trials: Sequence[optuna.Trial], proposals: Sequence[P]) -> Callable[[], Sequence[Outcome]] | None:
        """Start scoring the candidates on the device and return at once, with the call that waits for
        their outcomes (as ``score_many``'s); None where they can only be scored in the caller's time.
        The loop reads a launched round before it launches the next."""
        ...


def complete_count(study: optuna.Study) -> int:
    """Complete trials of the study, every worker's (a read of what changed since the last one)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


@runtime_checkable
class OneReadStorage(Protocol):
    """A storage that answers reads of a study made microseconds apart with one query
    (``studystore.BatchedRDBStorage``): the loop counts the complete trials, then ``ask`` looks for
    waiting ones."""

    def one_read(self) -> AbstractContextManager[None]: ...


def _one_read(study: optuna.Study) -> AbstractContextManager[None]:
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDB storage in its cache
    return backend.one_read() if isinstance(backend, OneReadStorage) else nullcontext()


@dataclass
class _Proposed(Generic[P]):
    """A running trial and its proposal (or why it has none)."""

    trial: optuna.Trial
    proposal: P | None = None
    error: BaseException | None = None


@dataclass
class _Round(Generic[P]):
    """Trials asked and proposed together; ``waiting`` once the device scores them (``launch``)."""

    proposed: list[_Proposed[P]]
    waiting: Callable[[], Sequence[Outcome]] | None = None

    def launch(self, objective: StagedObjective[P]) -> None:
        ready = [proposed for proposed in self.proposed if proposed.error is None]
        if not (ready and isinstance(objective, LaunchingObjective)):
            return
        try:
            self.waiting = objective.launch([p.trial for p in ready], [p.proposal for p in ready])
        except BaseException as error:  # the round's trials fail with it, as a failed score_many's do
            failed = [error] * len(ready)
            self.waiting = lambda: failed

    def outcomes(self, objective: StagedObjective[P]) -> list[Any]:
        """Each proposal's objective values, or the exception that failed it; several at once where
        the objective scores several. An error that fails the whole call fails them all."""
        outcomes: list[Any] = [proposed.error for proposed in self.proposed]
        ready = [i for i, proposed in enumerate(self.proposed) if proposed.error is None]
        try:
            values = self._values(objective, [self.proposed[i] for i in ready])
        except BaseException as error:
            values = [error] * len(ready)
        for i, value in zip(ready, values, strict=True):
            outcomes[i] = value
        return outcomes

    def drain(self) -> None:
        """Wait for a launched round's scores and drop them: its trials are failed instead, so an
        error scoring them says nothing that the failure does not."""
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            with suppress(Exception):
                waiting()

    def _values(self, objective: StagedObjective[P], ready: list[_Proposed[P]]) -> Sequence[Any]:
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            return waiting()
        if len(ready) > 1 and isinstance(objective, BatchObjective):
            return objective.score_many([p.trial for p in ready], [p.proposal for p in ready])
        return [objective.score(p.trial, p.proposal) for p in ready]


def run_trials(
    study: optuna.Study,
    objective: StagedObjective[Any],
    *,
    max_trials: int,
    complete_target: int,
    callbacks: Sequence[TrialCallback] = (),
    catch: tuple[type[Exception], ...] = (),
    should_stop: Callable[[], bool] | None = None,
    lookahead: bool = False,
    batch: int = 1,
) -> bool:
    """Run at most ``max_trials`` trials, until the study holds ``complete_target`` complete ones.

    An exception in ``catch`` fails its trial and the loop goes on; any other fails its trial and is
    raised. ``callbacks`` receive each finished trial (one shared copy: they must not change it);
    ``should_stop`` is asked after each round. ``batch``: trials asked, proposed and scored together
    in a round, by the objective's ``score_many`` or ``launch`` (the sampler sees them running, as it
    sees several workers' trials). Returns whether ``should_stop`` ended the loop."""
    _check_batch(objective, batch)
    stale = _StaleTrials(study)
    switching = _switch_interval(LOOKAHEAD_SWITCH_S) if lookahead else nullcontext()
    with switching, _Heartbeats(study) as beats, ThreadPoolExecutor(1, thread_name_prefix="propose") as pool:
        ahead: Future[_Round[Any]] | None = None
        ran = 0
        try:
            while ran < max_trials:
                stale.fail()
                wanted = min(batch, max_trials - ran)
                current = ahead.result() if ahead else _ask_round(study, objective, beats, wanted, complete_target)
                ahead = None
                if not current.proposed:
                    return False
                ran += len(current.proposed)
                # Look ahead only while this round would not complete the study (ask no more than it needs).
                size = min(batch, max_trials - ran, complete_target - complete_count(study) - len(current.proposed))
                if size > 0 and (lookahead or current.waiting is not None):
                    # A launched round leaves this thread free; an eager one needs it to score.
                    ahead = _proposing(pool, study, objective, beats, size, in_thread=current.waiting is None)
                finished = _score_and_tell(study, objective, current, catch, ahead)
                for trial in finished:
                    beats.discard(trial)
                    for callback in callbacks:
                        callback(study, trial)
                if should_stop is not None and should_stop():
                    return True
            return False
        finally:
            if ahead is not None:  # proposed, never told: stopped, failed, or the study is complete
                _abandon(study, ahead.result(), beats)


def _check_batch(objective: StagedObjective[Any], batch: int) -> None:
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    if batch > 1 and not isinstance(objective, BatchObjective | LaunchingObjective):
        raise ValueError("a batch of trials needs an objective that scores several (score_many or launch)")


@contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    """The interpreter hands the GIL to a waiting thread after ``seconds`` instead of its default 5 ms:
    the scoring thread, between two kernel launches, no longer waits up to 5 ms for the proposing one."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _ask_round(
    study: optuna.Study, objective: StagedObjective[Any], beats: _Heartbeats, size: int, complete_target: int
) -> _Round[Any]:
    """Up to ``size`` trials asked, proposed and launched where the objective launches, no more than
    the study lacks of ``complete_target`` complete ones (none when it lacks none)."""
    # The sampler's reads of the study (its search space, then the trials to sample from) come on the
    # trial's first suggest, microseconds after ask's: one read until a write.
    with _one_read(study):
        size = min(size, complete_target - complete_count(study))
        if size <= 0:
            return _Round([])
        first = _ask_one(study, objective, beats)
    current = _Round([first, *_ask_and_propose(study, objective, beats, size - 1)])
    current.launch(objective)
    return current


def _proposing(
    pool: ThreadPoolExecutor,
    study: optuna.Study,
    objective: StagedObjective[Any],
    beats: _Heartbeats,
    size: int,
    *,
    in_thread: bool,
) -> Future[_Round[Any]]:
    """The next round, proposed by ``pool``'s thread or now; its error is raised when it is taken."""
    if in_thread:
        return pool.submit(lambda: _Round(_ask_and_propose(study, objective, beats, size)))
    future: Future[_Round[Any]] = Future()
    try:
        future.set_result(_Round(_ask_and_propose(study, objective, beats, size)))
    except BaseException as error:
        future.set_exception(error)
    return future


def _ask_and_propose(
    study: optuna.Study, objective: StagedObjective[Any], beats: _Heartbeats, size: int
) -> list[_Proposed[Any]]:
    proposed = []
    for _ in range(size):
        with _one_read(study):
            proposed.append(_ask_one(study, objective, beats))
    return proposed


def _ask_one(study: optuna.Study, objective: StagedObjective[Any], beats: _Heartbeats) -> _Proposed[Any]:
    trial = study.ask()
    beats.add(trial)
    proposed: _Proposed[Any] = _Proposed(trial)
    try:
        proposed.proposal = objective.propose(trial)
    except BaseException as error:  # raised in order, by the thread that scores
        proposed.error = error
    return proposed


def _score_and_tell(
    study: optuna.Study,
    objective: StagedObjective[Any],
    current: _Round[Any],
    catch: tuple[type[Exception], ...],
    ahead: Future[_Round[Any]] | None,
) -> list[FrozenTrial]:
    """Score the round's candidates and tell each trial how it went, once the next round is proposed
    (so the sampler never sees these scores sooner on one run than on another) and launched (so the
    device does not wait for the telling). The first error that is not in ``catch`` is raised once
    every trial of the round is told."""
    outcomes = current.outcomes(objective)
    if ahead is not None and ahead.exception() is None:  # waits; an error is the next round's to raise
        ahead.result().launch(objective)
    finished, raised = [], None
    for proposed, outcome in zip(current.proposed, outcomes, strict=True):
        number = proposed.trial.number
        if not isinstance(outcome, BaseException):
            told = _tell(study, proposed.trial, values=outcome)
            if told.state == TrialState.FAIL:  # a value Optuna cannot store (NaN): failed, and said why
                log.warning("trial %d failed: its value %r is not a finite number", number, outcome)
        elif isinstance(outcome, optuna.TrialPruned):
            told = _tell(study, proposed.trial, state=TrialState.PRUNED)
        else:
            told = _tell(study, proposed.trial, state=TrialState.FAIL)
            if isinstance(outcome, catch):
                log.warning("trial %d failed: %s", number, outcome)
            elif raised is None:
                raised = outcome
        finished.append(told)
    if raised is not None:
        raise raised
    return finished


def _tell(
    study: optuna.Study,
    trial: optuna.Trial,
    *,
    values: float | Sequence[float] | None = None,
    state: TrialState | None = None,
) -> FrozenTrial:
    try:
        return _told(study, trial, values, state)
    except UpdateFinishedTrialError:  # failed for missed heartbeats (a stalled worker) and queued again
        log.warning("trial %d was finished by another worker meanwhile; its result is dropped", trial.number)
        return study._storage.get_trial(trial._trial_id)


def _told(
    study: optuna.Study, trial: optuna.Trial, values: float | Sequence[float] | None, state: TrialState | None
) -> FrozenTrial:
    """``study.tell`` without its deep copy of the finished trial (milliseconds at a hundred
    parameters): the callbacks share the storage's copy."""
    _tell_with_warning(study, trial, values, state, suppress_warning=True)
    return study._storage.get_trial(trial._trial_id)


def _abandon(study: optuna.Study, unscored: _Round[Any], beats: _Heartbeats) -> None:
    """Fail trials proposed ahead that will not be told their scores, saying so (a launched round is
    read first: the device's work on it ends before the loop does)."""
    unscored.drain()
    for proposed in unscored.proposed:
        proposed.trial.set_user_attr("error", "not scored: the search stopped before its turn")
        _told(study, proposed.trial, None, TrialState.FAIL)
        beats.discard(proposed.trial)


class _Heartbeats:
    """One thread beats, every heartbeat interval and in one pass, for this loop's running trials
    (at most two rounds: the current one and the one proposed ahead). ``study.optimize`` starts a thread per
    trial that writes a first beat at once: a thread and a commit per trial, fighting the loop for the
    database. A trial that ends before the first beat has none, which is safe: a trial whose worker
    died before its first beat is failed by the reaper on its start time (``workers.reaper``)."""

    def __init__(self, study: optuna.Study) -> None:
        storage = study._storage
        self.storage = storage
        self.every = storage.get_heartbeat_interval() if is_heartbeat_enabled(storage) else None
        self.running: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="trial-heartbeats", daemon=True)

    def __enter__(self) -> _Heartbeats:
        if self.every is not None:
            self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()

    def add(self, trial: optuna.Trial) -> None:
        with self.lock:
            self.running.add(trial._trial_id)

    def discard(self, trial: optuna.Trial | FrozenTrial) -> None:
        with self.lock:
            self.running.discard(trial._trial_id)

    def _beat(self) -> None:
        assert self.every is not None
        while not self.stopped.wait(self.every):
            with self.lock:
                running = sorted(self.running)
            for trial_id in running:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # the next beat retries; the loop must go on
                    log.warning("heartbeat of trial %d failed", trial_id, exc_info=True)


class _StaleTrials:
    """Fails the study's trials whose worker stopped beating (they are queued again), at most once per
    heartbeat interval: ``study.optimize`` asks before every trial."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        storage = study._storage
        self.every = (storage.get_heartbeat_interval() or 0) if is_heartbeat_enabled(storage) else None
        self.checked = -float("inf")

    def fail(self) -> None:
        if self.every is None or time.monotonic() - self.checked < self.every:
            return
        with warnings.catch_warnings():  # experimental in Optuna 5, as study.optimize's own call says
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        self.checked = time.monotonic()
