"""A search on this machine: the model prepared once, the study run under a progress bar.

``prepare_context`` and ``_run_study`` are the only calls into the search library's driver, so a change of
its signature is mended here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console
    from rich.progress import Progress, TaskID

    from search.candidates import SearchContext
    from search.recovery import RecoveryOutcome
    from search.results import SearchResult
    from search.spec import JobSpec


def run_local(
    spec: JobSpec,
    *,
    storage: str,
    study_name: str,
    device: str,
    artifacts: Path,
    console: Console,
    batch: int = 1,
) -> tuple[SearchResult, SearchContext, RecoveryOutcome | None]:
    """Run ``spec`` as study ``study_name`` in ``storage``, then its recovery if it asks for one;
    ``artifacts`` caches dense statistics; ``batch``: trials scored together (``search_trials``)."""
    _quiet_optuna()
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    _check_resume(spec, storage, study_name)
    with console.status(f"Loading {spec.model} and computing dense statistics..."):
        context = prepare_context(spec, device, artifacts)
    console.print(
        f"Loaded {spec.model}: {context.shape.dense_params():,} parameters, "
        f"{context.shape.num_layers} layers; prepared in {context.prepare_seconds:.1f}s "
        f"(calibration {tuple(context.tokens.calibration.shape)}, digest {context.tokens.digest})"
    )
    with _progress(console) as progress:
        result = _run_study(context, storage, study_name, *_progress_hooks(progress, spec), batch=batch)
        recovery = _recover(context, result, progress) if spec.recovery is not None and not result.stopped else None
    return result, context, recovery


def _check_resume(spec: JobSpec, storage: str, study_name: str) -> None:
    """An existing study resumes (``run_search`` loads it) up to ``--trials``, checked as the service
    checks ``POST /v1/jobs/{id}/resume``, before the model loads: never fewer than it already completed."""
    from search.resume import resumed_spec
    from search.trials import stored_complete_trials
    from studystore import make_storage

    resumed_spec(spec, complete=stored_complete_trials(make_storage(storage), study_name), n_trials=spec.n_trials)


def _recover(context: SearchContext, result: SearchResult, progress: Progress) -> RecoveryOutcome:
    """Distil into the verified finalists (``search.recovery``) under a progress bar of optimizer steps."""
    from search.recovery import recover
    from search.trials import SearchHooks

    task: TaskID = progress.add_task("recover", total=None, best="")

    def on_recover(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return recover(context, result, hooks=SearchHooks(on_recover=on_recover))


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar replaces per-trial log lines
    # Heartbeats and stale-trial retry are "experimental" to Optuna; we rely on them on purpose.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def prepare_context(spec: JobSpec, device: str, artifacts: Path, *, with_proxy: bool = True) -> SearchContext:
    """Load, check and prepare (``search.prepare_job``, as a worker does); with the proxy's dense
    reference (TraceNAS's sketch) built too, so the progress bar times trials only."""
    from search.candidates import prepare_job
    from search.loading import ModelCache
    from search.trials import job_proxy

    # The same artifact store as the service's workers: a rerun on the same model skips the dense passes.
    context = prepare_job(spec, models=ModelCache(artifacts), device=device)
    if with_proxy:
        job_proxy(context)
    return context


def _run_study(
    context: SearchContext,
    storage: str,
    study_name: str,
    on_trial: Callable[[Any, Any], None],
    on_verify: Callable[[int, int], None],
    *,
    batch: int,
) -> SearchResult:
    from search.study import run_search
    from search.trials import SearchHooks
    from studystore import make_storage

    hooks = SearchHooks(on_trial=[on_trial], on_verify=on_verify)
    return run_search(context, study_name=study_name, storage=make_storage(storage), hooks=hooks, batch=batch)


def _progress(console: Console) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[best]}"),
    )
    return Progress(*columns, console=console)


def _progress_hooks(progress: Progress, spec: JobSpec) -> tuple[Callable[[Any, Any], None], Callable[[int, int], None]]:
    """Optuna's per-trial callback and the verifier's per-batch callback, both drawing on ``progress``."""
    trials: TaskID = progress.add_task("trials", total=spec.n_trials, best="")
    verification: TaskID = progress.add_task("verify", total=None, visible=False, best="")
    best = [float("-inf")]

    def on_trial(study: Any, trial: Any) -> None:
        score = trial.values[0] if trial.values else None  # the proxy score comes first
        if score is not None and score > best[0]:
            best[0] = score
        # The proxy's favourite so far; the verified best, printed at the end, may be another trial.
        label = proxy_best_label(spec.proxy_label, best[0])
        progress.update(trials, completed=min(spec.n_trials, _completed(study)), best=label)

    def on_verify(done: int, total: int) -> None:
        progress.update(verification, visible=True, completed=done, total=total)

    return on_trial, on_verify


def proxy_best_label(proxy: str, score: float) -> str:
    """What the progress bar shows: the best proxy score so far, named as such."""
    return f"proxy's best {proxy}={score:.4f}"


def _completed(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
