"""``prunesearch``: run a search locally, or run the service's processes.

Heavy imports (torch, the API, Celery) happen inside the commands, so ``--help`` is instant and
``prunesearch api`` never loads torch.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from prunesearch.database import CommandLine

if TYPE_CHECKING:
    from rich.console import Console

    from search.candidates import SearchContext
    from search.results import SearchResult
    from search.spec import JobSpec


@click.group(cls=CommandLine)
@click.version_option(package_name="prunesearch")
def main() -> None:
    """PruneSearch: find pruned architectures of a language model under a parameter budget."""


# --- local search ------------------------------------------------------------------------------


@main.command()
@click.option("--model", required=True, help="Local Hugging Face model directory (or hub id).")
@click.option("--param-ratio", type=float, required=True, help="Fraction of the parameters to keep, in (0, 1].")
@click.option("--trials", "n_trials", type=int, default=100, show_default=True)
@click.option(
    "--proxy",
    default="tracenas",
    show_default=True,
    help="tracenas, prunenet, metanet, ensemble, or a comma-separated list whose ranks are aggregated.",
)
@click.option("--sampler", default="tpe", show_default=True, help="tpe, random, nsga2 or cmaes.")
@click.option("--seed", type=int, default=None)
@click.option("--calibration", "calibration_source", default=None, help="Text file or directory of text files.")
@click.option("--samples", "n_samples", type=int, default=16, show_default=True, help="Calibration sequences.")
@click.option("--seq-len", type=int, default=256, show_default=True)
@click.option("--heldout", "heldout_samples", type=int, default=16, show_default=True, help="Held-out sequences.")
@click.option("--verify-top-k", type=int, default=5, show_default=True)
@click.option("--ffn-alignment", type=int, default=32, show_default=True)
@click.option("--depth", type=click.Choice(["sublayer", "layer", "none"]), default="sublayer", show_default=True)
@click.option("--no-width", "width", flag_value=False, default=True, help="Do not search heads and FFN channels.")
@click.option("--sparsity", type=float, default=0.0, show_default=True, help="Largest per-layer sparsity; 0 = off.")
@click.option("--parameterization", type=click.Choice(["per_layer", "compact"]), default="per_layer", show_default=True)
@click.option("--selection", type=click.Choice(["wanda", "magnitude", "flap"]), default="wanda", show_default=True)
@click.option(
    "--pareto", is_flag=True, help="Search the score/size Pareto front between --min-param-ratio and --param-ratio."
)
@click.option("--min-param-ratio", type=float, default=None)
@click.option("--storage", default=None, help="Optuna storage URL (default: the SQLite database in the data dir).")
@click.option("--study-name", default=None, help="Resume or name the study (default: a new timestamped one).")
@click.option("--device", default="auto", show_default=True)
def search(
    model: str,
    param_ratio: float,
    n_trials: int,
    proxy: str,
    sampler: str,
    seed: int | None,
    calibration_source: str | None,
    n_samples: int,
    seq_len: int,
    heldout_samples: int,
    verify_top_k: int,
    ffn_alignment: int,
    depth: str,
    width: bool,
    sparsity: float,
    parameterization: str,
    selection: str,
    pareto: bool,
    min_param_ratio: float | None,
    storage: str | None,
    study_name: str | None,
    device: str,
) -> None:
    """Search locally, with no services: SQLite storage, a progress bar, the best architecture at the end."""
    from pydantic import ValidationError
    from rich.console import Console

    from search.errors import SearchError
    from search.spec import JobSpec, check_job

    console = Console()
    try:
        spec = JobSpec(
            model=model,
            target={"param_ratio": param_ratio, "min_param_ratio": min_param_ratio},
            n_trials=n_trials,
            proxy=[name.strip() for name in proxy.split(",")] if "," in proxy else proxy,
            sampler=sampler,
            seed=seed,
            calibration={
                "source": calibration_source,
                "n_samples": n_samples,
                "seq_len": seq_len,
                "heldout_samples": heldout_samples,
            },
            search_space={
                "ffn_alignment": ffn_alignment,
                "depth": depth,
                "width": width,
                "sparsity": sparsity,
                "parameterization": parameterization,
                "selection": selection,
            },
            objectives=["score", "params"] if pareto else ["score"],
            verify_top_k=verify_top_k,
        )
        check_job(spec)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise click.UsageError(problems) from error
    except SearchError as error:
        raise click.UsageError(str(error)) from error
    if storage is None:
        from service.settings import get_settings

        storage = get_settings().optuna_storage_url
    study_name = study_name or time.strftime("search-%Y%m%d-%H%M%S")
    try:
        result, context = _run_local(spec, storage, study_name, device, console)
    except SearchError as error:
        raise click.ClickException(str(error)) from error
    _print_result(console, spec, context, result)
    console.print(f"\nStudy [bold]{study_name}[/] in {storage}  (open it with: optuna-dashboard {storage})")


def _run_local(
    spec: JobSpec, storage: str, study_name: str, device: str, console: Console
) -> tuple[SearchResult, SearchContext]:
    import optuna
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from search.candidates import prepare_job
    from search.loading import ModelCache
    from search.storage import make_storage
    from search.study import run_search
    from search.trials import SearchHooks, job_proxy

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar replaces per-trial log lines
    # Heartbeats and stale-trial retry are "experimental" to Optuna; we rely on them on purpose.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    from workers.settings import get_worker_settings

    with console.status(f"Loading {spec.model} and computing dense statistics..."):
        # The same artifact store as the service's workers: a rerun on the same model skips the dense passes.
        context = prepare_job(spec, models=ModelCache(get_worker_settings().artifact_cache_dir), device=device)
        job_proxy(context)  # the proxy's dense reference (TraceNAS's sketch), before the progress bar
    console.print(
        f"Loaded {spec.model}: {context.shape.dense_params():,} parameters, "
        f"{context.shape.num_layers} layers; prepared in {context.prepare_seconds:.1f}s "
        f"(calibration {tuple(context.tokens.calibration.shape)}, digest {context.tokens.digest})"
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[best]}"),
    )
    with Progress(*columns, console=console) as progress:
        trials = progress.add_task("trials", total=spec.n_trials, best="")
        verification = progress.add_task("verify", total=None, visible=False, best="")
        best = [float("-inf")]

        def on_trial(_study: Any, trial: Any) -> None:
            score = trial.values[0] if trial.values else None  # the proxy score comes first
            if score is not None and score > best[0]:
                best[0] = score
            progress.update(
                trials, completed=min(spec.n_trials, _completed(_study)), best=f"best {spec.proxy_label}={best[0]:.4f}"
            )

        def on_verify(done: int, total: int) -> None:
            progress.update(verification, visible=True, completed=done, total=total)

        result = run_search(
            context,
            study_name=study_name,
            storage=make_storage(storage),
            hooks=SearchHooks(on_trial=[on_trial], on_verify=on_verify),
        )
    return result, context


def _completed(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _print_result(console: Console, spec: JobSpec, context: SearchContext, result: SearchResult) -> None:
    from rich.table import Table

    from search.arch import ArchConfig

    best = result.best
    if best is None:
        console.print("[red]No trial completed.[/]")
        return
    shape = context.shape
    arch = ArchConfig.from_dict(best.arch)
    table = Table(title=f"Best architecture (trial {best.trial_number}, {best.origin})")
    columns = ["layer", "attention heads", "KV heads", "FFN channels"] + (["sparsity"] if arch.sparse else [])
    for column in columns:
        table.add_column(column, justify="right")
    for i, layer in enumerate(arch.layers):
        heads = f"{layer.heads}/{shape.num_heads}" if layer.heads else "[dim]dropped[/]"
        ffn = f"{layer.ffn_channels}/{shape.intermediate_size}" if layer.ffn_channels else "[dim]dropped[/]"
        row = [str(i), heads, f"{layer.heads // shape.group_size}/{shape.num_kv_heads}", ffn]
        table.add_row(*row, *([f"{layer.sparsity:.2f}"] if arch.sparse else []))
    console.print(table)
    dense = shape.dense_params()
    target = spec.target.param_ratio * dense
    console.print(
        f"Parameters: {best.param_count:,} = {best.param_ratio:.4f} of {dense:,} "
        f"(target {spec.target.param_ratio} = {target:,.0f}; off by {best.param_count / target - 1:+.2%})"
    )
    scores = ", ".join(f"{name}={value:.4f}" for name, value in best.scores.items())
    console.print(f"Proxy scores: {scores}")
    if best.verified is not None and result.dense is not None:
        verified = best.verified
        primary = verified["primary"]
        figures = ", ".join(
            f"{name} {value:.4f} (dense {result.dense.metrics[name]:.4f})"
            for name, value in verified.items()
            if name in result.dense.metrics
        )
        console.print(
            f"Verified on {verified['tokens']:,} held-out tokens, best of {len(result.verified)} finalists "
            f"by {primary}: {figures}"
        )
    if spec.multi_objective:
        front = Table(title=f"Pareto front ({len(result.pareto)} trials)")
        for column in ("trial", "param ratio", spec.proxy_label):
            front.add_column(column, justify="right")
        by_number = {t.number: t for t in result.trials}
        for number in sorted(result.pareto, key=lambda n: by_number[n].param_ratio or 0.0):
            trial = by_number[number]
            front.add_row(str(number), f"{trial.param_ratio:.4f}", f"{trial.value:.4f}")
        console.print(front)


# --- models -------------------------------------------------------------------------------------


@main.command("demo-model")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=click.Choice(["tiny", "small"]), default="small", show_default=True)
def demo_model(directory: Path, size: str) -> None:
    """Build a Llama-style decoder with random weights and a BPE tokenizer (offline) in DIRECTORY."""
    from search.demo import build_demo_model

    path = build_demo_model(directory, size=size)
    click.echo(f"Demo model ({size}, random weights) written to {path}")


@main.command()
@click.argument("job_id")
@click.option("--trial", "number", type=int, default=None, help="Trial number (default: the job's best).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", default="auto", show_default=True)
def export(job_id: str, number: int | None, out: Path, device: str) -> None:
    """Export a job's best (or any) trial as a physically smaller model in OUT."""
    from prunesearch.database import open_sessions, shown_url
    from search.arch import ArchConfig
    from search.candidates import prepare_job
    from search.errors import SearchError
    from search.export import export_model
    from search.spec import JobSpec
    from service import repository
    from service.db import session_scope
    from service.settings import get_settings

    settings = get_settings()
    with session_scope(open_sessions(settings)) as session:
        job = repository.get_job(session, job_id)
        if job is None:
            raise click.ClickException(f"no job {job_id!r} in {shown_url(settings.database_url)}")
        if number is None:
            if not job.best:
                raise click.ClickException(f"job {job_id} has no best trial yet (status {job.status})")
            number = int(job.best["trial_number"])
        trial = repository.get_trial(session, job_id, number)
        if trial is None or trial.arch is None:
            raise click.ClickException(f"job {job_id} has no completed trial {number}")
        spec, arch, scores = JobSpec.model_validate(job.spec), ArchConfig.from_dict(trial.arch), trial.scores
    try:
        context = prepare_job(spec, device=device)
        info = export_model(
            context.loaded,
            context.selection(arch),
            out,
            provenance={"job_id": job_id, "trial_number": number, "scores": scores},
        )
    except SearchError as error:
        raise click.ClickException(str(error)) from error
    loader = "prunesearch.load_pruned" if info.kind == "per_layer" else "AutoModel(ForCausalLM).from_pretrained"
    click.echo(
        f"Exported trial {number} ({info.kind}, {info.param_count:,} parameters, "
        f"{info.size_bytes / 1e6:.1f} MB) to {out}; load it with {loader}."
    )


# --- service processes --------------------------------------------------------------------------


@main.command()
@click.option("--host", default=None, help="Bind address (default: PRUNESEARCH_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: PRUNESEARCH_PORT, 8000).")
def api(host: str | None, port: int | None) -> None:
    """Run the REST API (no torch, no GPU)."""
    import uvicorn

    from prunesearch.database import ready_database, where
    from service.settings import get_settings

    settings = get_settings()
    click.echo(where(settings), err=True)
    ready_database(settings)
    uvicorn.run("service.api.app:create_app", factory=True, host=host or settings.host, port=port or settings.port)


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--parent-pid", type=int, default=None, hidden=True, help="Exit when this process (serve) exits.")
def worker(loglevel: str, parent_pid: int | None) -> None:
    """Run one worker process (one per GPU: set CUDA_VISIBLE_DEVICES)."""
    from prunesearch.database import ready_database, where
    from prunesearch.lifetime import stop_with_parent
    from service.settings import get_settings

    if parent_pid is not None:
        stop_with_parent(parent_pid)
    settings = get_settings()
    click.echo(where(settings), err=True)
    ready_database(settings)
    from workers.celery_app import app

    app.worker_main(["worker", f"--loglevel={loglevel}", "--concurrency=1", f"--hostname=prunesearch-{os.getpid()}@%h"])


@main.command()
@click.option("--host", default=None, help="Bind address (default: PRUNESEARCH_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: PRUNESEARCH_PORT, 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the API and an embedded worker with no external services (SQLite, filesystem broker)."""
    import uvicorn

    from prunesearch.database import where
    from prunesearch.lifetime import start_worker, stop_signals, stop_worker
    from service.migrate import upgrade
    from service.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url)
    # The worker child must agree with us on every resolved path, whatever its working directory.
    env = os.environ | {
        "PRUNESEARCH_DATA_DIR": str(settings.data_dir),
        "PRUNESEARCH_DATABASE_URL": settings.database_url,
        "PRUNESEARCH_OPTUNA_STORAGE_URL": settings.optuna_storage_url,
        "PRUNESEARCH_BROKER_URL": settings.broker_url,
    }
    worker_process = start_worker([sys.executable, "-m", "prunesearch", "worker"], env)
    click.echo(f"{where(settings)}; worker pid {worker_process.pid}")
    try:
        with stop_signals():  # SIGTERM as SIGINT: leave through the finally, never skip it
            uvicorn.run(
                "service.api.app:create_app", factory=True, host=host or settings.host, port=port or settings.port
            )
    finally:
        click.echo(f"Stopping the worker (pid {worker_process.pid})", err=True)
        stop_worker(worker_process)


@main.group()
def db() -> None:
    """Manage the service's database schema (Alembic)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from prunesearch.database import shown_url
    from service.migrate import current, upgrade
    from service.settings import get_settings

    url = get_settings().database_url
    upgrade(url, revision)
    click.echo(f"database at revision {current(url)} ({shown_url(url)})")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (``base`` removes the service's tables, not Optuna's)."""
    from prunesearch.database import shown_url
    from service.migrate import current, downgrade
    from service.settings import get_settings

    url = get_settings().database_url
    downgrade(url, revision)
    click.echo(f"database at revision {current(url)} ({shown_url(url)})")


@db.command("current")
def db_current() -> None:
    """Print the applied revision."""
    from service.migrate import current

    click.echo(current(None) or "none")


from prunesearch.keys import keys  # noqa: E402  (a command group of its own module; imports only click)

main.add_command(keys)
