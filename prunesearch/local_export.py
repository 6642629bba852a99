"""Exports from a local search's Optuna study: the verified best after the search (``search --out``)
and any trial later (``export --study``), written as a job's best is (``search.export.export_model``)."""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from search.candidates import SearchContext
    from search.export import ExportInfo
    from search.onnx_export import OnnxExportInfo
    from search.recovery import RecoveryOutcome
    from search.results import BestEntry, SpeedReport, SpeedWorkload


def export_entry(
    context: SearchContext,
    entry: BestEntry,
    out: Path,
    *,
    study_name: str,
    recovery: RecoveryOutcome | None = None,
) -> ExportInfo:
    """Export one trial (its best entry: verified figures when known) to ``out``; with ``recovery``,
    its winner's recovered weights (``entry`` is then the winner's)."""
    from search.arch import ArchConfig
    from search.export import export_model

    provenance = {
        "study_name": study_name,
        "trial_number": entry.trial_number,
        "origin": entry.origin,
        "scores": entry.scores,
        "verified": entry.verified,
        "calibration_digest": context.tokens.digest,
        "job_spec": context.spec.model_dump(mode="json"),
    }
    winner = recovery.winner if recovery is not None else None
    if recovery is not None and winner is not None:
        provenance["recovery"] = recovery.report.model_dump(mode="json")
    selection = context.selection(ArchConfig.from_dict(entry.arch))  # type: ignore[arg-type]
    weights = winner.state if winner is not None else None
    return export_model(context.loaded, selection, out, provenance=provenance, weights=weights)


def describe_export(number: int, info: ExportInfo) -> str:
    loader = "prunesearch.load_pruned" if info.kind == "per_layer" else "AutoModel(ForCausalLM).from_pretrained"
    share = info.weights_bytes / info.dense_weights_bytes
    return (
        f"Exported trial {number} ({info.kind}, {info.param_count:,} parameters, {info.dtype} weights of "
        f"{info.weights_bytes / 1e6:.1f} MB = {share:.0%} of the dense model's) to {info.directory}; "
        f"load it with {loader}."
    )


def measure_export(context: SearchContext, info: ExportInfo, workload: SpeedWorkload) -> SpeedReport:
    """The export's speed report beside the dense model, as a worker measures a job's best."""
    from search.export import load_pruned
    from search.speed import speed_report

    pruned = load_pruned(info.directory)
    return speed_report(
        pruned, context.loaded, workload, pruned_size=info.weights_bytes, dense_size=info.dense_weights_bytes
    )


def export_command(study_name: str, storage: str) -> str:
    """The command that exports trial N of this study later."""
    return f"prunesearch export --study {shlex.quote(study_name)} --storage {shlex.quote(storage)} --trial N --out DIR"


def check_out_dir(out: Path) -> None:
    """Refuse before a search, not after it, a folder the export could not be written to."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise click.BadParameter(f"{out} exists and is not an empty directory", param_hint="--out")


def export_study_trial(study_name: str, storage: str, number: int, out: Path, *, device: str, artifacts: Path) -> str:
    """Export trial ``number`` of a local study; returns what to tell the user."""
    from prunesearch.local_search import prepare_context
    from search.results import best_entry, describe_trial
    from search.spec import JobSpec

    check_out_dir(out)
    study = _load_study(study_name, storage)
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or "arch" not in trial.user_attrs:
        raise click.ClickException(f"study {study_name!r} has no completed trial {number}")
    context = prepare_context(JobSpec.model_validate(study.user_attrs["spec"]), device, artifacts, with_proxy=False)
    entry = best_entry(describe_trial(trial), verified=None)
    return describe_export(number, export_entry(context, entry, out, study_name=study_name))


def _load_study(study_name: str, storage: str) -> Any:
    import optuna

    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise click.ClickException(f"no database at {storage}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as error:
        raise click.ClickException(f"no study {study_name!r} in {storage}") from error
    if "spec" not in study.user_attrs:
        raise click.ClickException(f"study {study_name!r} was not made by prunesearch (it records no job spec)")
    return study


def in_format(export_format: str, out: Path, write: Callable[[Path], str]) -> str:
    """Run ``write`` (exports a model into a folder, returns what to tell the user) for ``--format``.

    ``model`` writes into ``out``. ``onnx`` writes the model into a scratch folder beside ``out``
    (large models do not fit every /tmp) and converts it into ``out``.
    """
    if export_format == "model":
        return write(out)
    from search.errors import SearchError
    from search.onnx_export import export_onnx, require_onnx

    check_out_dir(out)
    try:
        require_onnx()  # before the model is loaded, not after
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as scratch:
            write(Path(scratch) / "model")
            info = export_onnx(Path(scratch) / "model", out)
    except SearchError as error:
        raise click.ClickException(str(error)) from error
    return describe_onnx(info)


def describe_onnx(info: OnnxExportInfo) -> str:
    layout = info.layout
    cache = f", {len(layout.cache)} KV-cache slots" if layout.kind == "decoder" else ""
    run = (
        f"search.onnx_runtime.generate_onnx({str(info.directory)!r}, input_ids, max_new_tokens=N)"
        if layout.kind == "decoder"
        else f"onnxruntime.InferenceSession({str(info.directory / layout.graph)!r})"
    )
    return (
        f"Wrote an ONNX graph ({layout.kind}, {layout.dtype}{cache}, {info.size_bytes / 1e6:.1f} MB) to "
        f"{info.directory}; its inputs and cache layout are in onnx_layout.json. Run it with {run}."
    )
