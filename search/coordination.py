"""Several workers on one study: priming a job's proxy once per process, helping with chunks of
trials, and waiting for the other workers' trials before verifying.

Optuna's RDB storage coordinates the sampler across processes; what it cannot know is which job a
process's shared proxy object was last primed for. ``PrimedProxies`` keeps that, per process.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import Any

import optuna
from optuna.storages import BaseStorage

# Optuna has no public way to ask whether a storage runs heartbeats; its own helper is the one place that says.
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from search.audit import prime
from search.candidates import SearchContext
from search.ladder import Verifier
from search.proxies import MetaNetStore, Proxy
from search.trials import NO_HOOKS, SearchHooks, job_proxy, job_sampler, remaining_trials, search_trials


class PrimedProxies:
    """Which study each proxy object of this process was last primed for.

    A proxy object is shared by every job on its model in this process (``search.trials.job_proxy``),
    and priming changes it: a worker taking a second chunk of the same job finds it primed for that
    job and skips the audit; once another job primed it, the first job's chunks prime it again.
    Entries go when their proxy is garbage-collected.
    """

    def __init__(self) -> None:
        self._studies: dict[int, str] = {}

    def primed_for(self, study_name: str, proxy: Proxy) -> bool:
        return self._studies.get(id(proxy)) == study_name

    def mark(self, study_name: str, proxy: Proxy) -> None:
        key = id(proxy)
        if key not in self._studies:
            weakref.finalize(proxy, self._studies.pop, key, None)
        self._studies[key] = study_name


PRIMED = PrimedProxies()  # this process's


def prime_proxy(
    context: SearchContext,
    proxy: Proxy,
    study: optuna.Study,
    auditor: Verifier,
    *,
    metanet_store: MetaNetStore | None,
    primed: PrimedProxies = PRIMED,
) -> dict[str, Any] | None:
    """Prime the job's proxy (ensembles rank against a reference population, the meta-network
    trains; search.audit). Deterministic, so every worker of a job primes it the same way; the
    first stores the state for the report."""
    proxy_state = study.user_attrs.get("proxy_prime")
    if primed.primed_for(study.study_name, proxy) and proxy_state is not None:
        return proxy_state
    state = prime(context, proxy, auditor, store=metanet_store, job=study.study_name, previous=proxy_state)
    if state is not None and proxy_state is None:
        study.set_user_attr("proxy_prime", state)
    primed.mark(study.study_name, proxy)
    return state if state is not None else proxy_state


def search_chunk(
    context: SearchContext,
    *,
    study_name: str,
    storage: str | BaseStorage,
    max_trials: int,
    hooks: SearchHooks = NO_HOOKS,
    metanet_store: MetaNetStore | None = None,
    lookahead: bool = False,
    batch: int = 1,
) -> int:
    """Help with a study another process opened and verifies: run up to ``max_trials`` of its trials
    (``lookahead``, ``batch``: as ``search_trials``). Returns how many this call ran (0 when the study is
    complete, stopped, or not opened yet)."""
    # Seeded like the coordinator, every worker would propose the coordinator's candidates again;
    # each process draws its own stream (runs with several workers are not reproducible anyway).
    seed = None if context.spec.seed is None else context.spec.seed + os.getpid()
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=job_sampler(context, seed))
    except KeyError:
        return 0
    if remaining_trials(study, context.spec) <= 0 or hooks.stop_requested():
        return 0
    ran = 0

    def count(_study: optuna.Study, _trial: FrozenTrial) -> None:
        nonlocal ran
        ran += 1

    proxy = job_proxy(context)
    prime_proxy(context, proxy, study, Verifier(context.loaded.adapter, context.tokens), metanet_store=metanet_store)
    counted = SearchHooks(on_trial=[*hooks.on_trial, count], should_stop=hooks.should_stop)
    search_trials(context, proxy, study, max_trials=max_trials, hooks=counted, lookahead=lookahead, batch=batch)
    return ran


def await_other_workers(
    study: optuna.Study,
    storage: str | BaseStorage | None,
    hooks: SearchHooks,
    *,
    poll_s: float = 0.5,
) -> bool:
    """Wait until no trial of the study is running (other workers finish theirs; a dead worker's
    trial is failed by its missed heartbeats). Returns whether the hooks stopped the wait."""
    if not isinstance(storage, BaseStorage) or not is_heartbeat_enabled(storage):
        return False  # no heartbeats, so no other worker (and no way to tell a dead one)
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if hooks.stop_requested():
            return True
        optuna.storages.fail_stale_trials(study)
        time.sleep(poll_s)
    return False
