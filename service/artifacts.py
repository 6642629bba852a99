"""Where a job's exports live on disk: the layout that the worker writes and the API serves.

The worker writes each export into ``{artifacts_dir}/{job_id}/{name}.partial/`` and renames it to
``{name}/`` when complete, so a directory without the suffix is whole and never changes again.
Serving them (listing, files, tars) is the HTTP edge's part: ``service.api.exports``.
"""

from __future__ import annotations

from pathlib import Path

from service.paths import resolve_inside

__all__ = ["ONNX_SUFFIX", "PARTIAL_SUFFIX", "job_artifacts_dir", "onnx_export_name", "trial_export_name"]

PARTIAL_SUFFIX = ".partial"
# The ONNX graph of export ``{name}`` is the export ``{name}.onnx`` (so ``best.onnx.tar`` downloads it).
ONNX_SUFFIX = ".onnx"


def trial_export_name(number: int) -> str:
    return f"trial-{number}"


def onnx_export_name(name: str) -> str:
    return name + ONNX_SUFFIX


def job_artifacts_dir(artifacts_dir: Path, job_id: str) -> Path:
    return resolve_inside(artifacts_dir, job_id)
