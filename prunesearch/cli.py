"""``prunesearch``: run a search locally, or run the service's processes.

Heavy imports (torch, the API, Celery) happen inside the commands, so ``--help`` is instant and
``prunesearch api`` never loads torch.
"""

from __future__ import annotations

import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from prunesearch.database import CommandLine, open_sessions, shown_url
from prunesearch.spec_options import build_spec, with_spec_options

if TYPE_CHECKING:
    from rich.console import Console

    from search.spec import JobSpec
    from workers.settings import WorkerSettings


@click.group(cls=CommandLine)
@click.version_option(package_name="prunesearch")
def main() -> None:
    """PruneSearch: find pruned architectures of a language model under a parameter budget."""


# --- local search ------------------------------------------------------------------------------


@main.command()
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A job spec (JSON, as POSTed to /v1/jobs); the options below override its fields.",
)
@with_spec_options
@click.option(
    "--pareto", is_flag=True, help="Search the score/size Pareto front between --min-param-ratio and --param-ratio."
)
@click.option("--storage", default=None, help="Optuna storage URL (default: the SQLite database in the data dir).")
@click.option("--study-name", default=None, help="Resume or name the study (default: a new timestamped one).")
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Export the verified best here, physically smaller, as a job's best is exported.",
)
@click.option("--print-spec", is_flag=True, help="Print the job spec (JSON for POST /v1/jobs) and exit.")
def search(
    spec_file: Path | None,
    pareto: bool,
    storage: str | None,
    study_name: str | None,
    device: str,
    out: Path | None,
    print_spec: bool,
    **fields: Any,
) -> None:
    """Search locally, with no services: SQLite storage, a progress bar, the verified best at the end.

    Every field of a job spec has an option; `--spec job.json` reads a whole spec, and the options
    given beside it override its fields.
    """
    from rich.console import Console

    from prunesearch.local_export import check_out_dir

    spec = _local_job_spec(spec_file, fields, pareto)
    if print_spec:
        click.echo(spec.model_dump_json(indent=2))
        return
    if out is not None:
        check_out_dir(out)
    from workers.settings import get_worker_settings

    settings = get_worker_settings()  # a local search is this machine's worker: the same artifact store
    storage = storage or settings.optuna_storage_url
    study_name = study_name or time.strftime("search-%Y%m%d-%H%M%S")
    console = Console()
    console.print(_seed_line(spec.seed))
    _search_and_report(spec, console, storage, study_name, device, settings, out)
    _print_hints(console, storage, study_name)


def _local_job_spec(spec_file: Path | None, fields: dict[str, Any], pareto: bool) -> JobSpec:
    """The job the command line describes, checked as the API checks a submission."""
    from search.errors import SearchError
    from search.spec import check_job

    spec = build_spec(spec_file, fields, {"objectives": ["score", "params"]} if pareto else None)
    try:
        check_job(spec)
    except SearchError as error:
        raise click.UsageError(str(error)) from error
    return spec


def _seed_line(seed: int | None) -> str:
    if seed is None:
        return "No seed (the spec sets it to null): results vary from run to run."
    return f"Seed {seed}: a rerun gives the same result; vary it with --seed N."


def _search_and_report(
    spec: JobSpec,
    console: Console,
    storage: str,
    study_name: str,
    device: str,
    settings: WorkerSettings,
    out: Path | None,
) -> None:
    from prunesearch.local_export import describe_export, export_entry, measure_export
    from prunesearch.local_search import run_local
    from prunesearch.summary import print_result, speed_table
    from search.errors import SearchError

    artifacts = settings.artifact_cache_dir
    try:
        result, context, recovery = run_local(
            spec,
            storage=storage,
            study_name=study_name,
            device=device,
            artifacts=artifacts,
            console=console,
            batch=settings.trial_batch,
        )
        best = print_result(console, spec, context, result, recovery)
        if out is not None and best is not None:
            info = export_entry(context, best, out, study_name=study_name, recovery=recovery)
            console.print(describe_export(best.trial_number, info))
            if not context.loaded.split:  # split over GPUs, the timings would be the transfers' (README)
                with console.status("Measuring the exported model's speed beside the dense model..."):
                    speed = measure_export(context, info, settings.speed)
                console.print(speed_table(speed))
    except SearchError as error:
        raise click.ClickException(str(error)) from error


def _print_hints(console: Console, storage: str, study_name: str) -> None:
    from prunesearch.local_export import export_command

    console.print(f"\nStudy {study_name} in {storage}", markup=False, highlight=False)
    for line in (
        f"Export any of its trials: {export_command(study_name, storage)}",
        f"Browse every trial: optuna-dashboard {storage}  (install it with: pip install -e '.[dashboard]')",
    ):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


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
@click.argument("job_id", required=False)
@click.option("--trial", "number", type=int, default=None, help="Trial number (default: the job's best).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", default="auto", show_default=True)
@click.option("--study", default=None, help="Instead of a job: the Optuna study of a `prunesearch search`.")
@click.option("--storage", default=None, help="With --study: its storage URL (default: the data dir's database).")
@click.option(
    "--format",
    "export_format",
    type=click.Choice(["model", "onnx"]),
    default="model",
    show_default=True,
    help="model: safetensors and config (transformers, prunesearch.load_pruned); "
    "onnx: an ONNX graph with the KV cache as inputs and outputs (onnxruntime; pip install 'prunesearch[onnx]').",
)
def export(
    job_id: str | None,
    number: int | None,
    out: Path,
    device: str,
    study: str | None,
    storage: str | None,
    export_format: str,
) -> None:
    """Export a job's best (or any) trial, or a trial of a local search's study, as a smaller model in OUT."""
    from prunesearch.local_export import in_format

    if study is None and job_id is None:
        raise click.UsageError("give a JOB_ID, or --study NAME --trial N for a trial of a local search")
    if study is not None and number is None:
        raise click.UsageError("--study needs --trial N (its trial numbers are in the search's output)")
    if study is not None:
        write = partial(_export_study_trial, study, storage, number, device=device)
    else:
        write = partial(_export_job_trial, job_id, number, device=device)
    click.echo(in_format(export_format, out, write))


def _export_job_trial(job_id: str, number: int | None, out: Path, *, device: str) -> str:
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
    return (
        f"Exported trial {number} ({info.kind}, {info.param_count:,} parameters, "
        f"{info.size_bytes / 1e6:.1f} MB) to {out}; load it with {loader}."
    )


def _export_study_trial(study: str, storage: str | None, number: int, out: Path, *, device: str) -> str:
    from prunesearch.local_export import export_study_trial
    from search.errors import SearchError
    from workers.settings import get_worker_settings

    settings = get_worker_settings()
    try:
        message = export_study_trial(
            study,
            storage or settings.optuna_storage_url,
            number,
            out,
            device=device,
            artifacts=settings.artifact_cache_dir,
        )
    except SearchError as error:
        raise click.ClickException(str(error)) from error
    return message


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
@click.option(
    "--queues",
    default="celery,prunesearch.notify",
    show_default=True,
    help="Queues to consume: 'celery' (searches, exports), 'prunesearch.notify' (webhook deliveries). A worker "
    "with '--queues prunesearch.notify' alone delivers webhooks without ever waiting behind a search.",
)
def worker(loglevel: str, parent_pid: int | None, queues: str) -> None:
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

    app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            "--concurrency=1",
            f"--queues={queues}",
            f"--hostname=prunesearch-{os.getpid()}@%h",
        ]
    )


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
    # One worker serves every job here: no idle worker could take a chunk, and a cancelled job's unused
    # chunk tasks would sit ahead of its resume in the (1 s polling) filesystem queue.
    env.setdefault("PRUNESEARCH_CHUNK_TRIALS", "0")
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
