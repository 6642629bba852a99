"""Serving a job's exports: listing them, finding one file, streaming one as a tar, requesting one
(a trial's model, or the ONNX graph of an export).

The layout on disk (``{name}.partial/`` renamed to ``{name}/`` when whole) is ``service.artifacts``.
Names and paths come from URLs; every lookup goes through ``service.paths.resolve_inside``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from celery import Celery
from sqlalchemy.orm import Session

from search.export_format import PROVENANCE_FILE
from service import repository
from service.artifacts import ONNX_SUFFIX, PARTIAL_SUFFIX, job_artifacts_dir, onnx_export_name, trial_export_name
from service.broker import enqueue_export, enqueue_onnx_export
from service.errors import Conflict, NotFound, Unavailable
from service.paths import resolve_inside
from service.states import TrialState

logger = logging.getLogger(__name__)

__all__ = [
    "Export",
    "ExportFile",
    "ExportNotConvertible",
    "ExportPending",
    "TarStream",
    "TrialNotExportable",
    "export_dir",
    "export_file",
    "find_export",
    "list_exports",
    "request_onnx_export",
    "request_trial_export",
    "tar_export",
]

# Export names as the worker writes them ("best", "trial-17"); anything else is not served.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 20


class ExportPending(Conflict):
    title = "Export not ready"
    type = "export-pending"


class ExportNotConvertible(Conflict):
    title = "Export cannot be converted"
    type = "export-not-convertible"


class TrialNotExportable(Conflict):
    title = "Trial cannot be exported"
    type = "trial-not-exportable"


@dataclass(frozen=True)
class ExportFile:
    path: str  # POSIX path relative to the export directory
    size: int


@dataclass(frozen=True)
class Export:
    name: str
    status: Literal["ready", "pending"]
    files: list[ExportFile] = field(default_factory=list)  # empty while pending
    size: int = 0  # bytes of the listed files; for a pending export, bytes written so far
    provenance: dict[str, Any] | None = None


def list_exports(artifacts_dir: Path, job_id: str) -> list[Export]:
    """Every export of a job, by name; a name both ready and being rewritten counts as ready."""
    root = job_artifacts_dir(artifacts_dir, job_id)
    if not root.is_dir():
        return []
    exports: dict[str, Export] = {}
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        name, pending = _split_name(entry.name)
        if name is None or not _is_dir_inside(root, entry.name):
            continue
        if pending:
            exports.setdefault(name, Export(name=name, status="pending", size=_bytes_so_far(root / entry.name)))
        else:
            exports[name] = _ready_export(root, name)
    return [exports[name] for name in sorted(exports)]


def find_export(artifacts_dir: Path, job_id: str, name: str) -> Export | None:
    """The export ``name`` (ready or pending), or None. ``NotFound`` for a name that cannot be one."""
    _check_name(name)
    root = job_artifacts_dir(artifacts_dir, job_id)
    if _is_dir_inside(root, name):
        return _ready_export(root, name)
    if _is_dir_inside(root, name + PARTIAL_SUFFIX):
        return Export(name=name, status="pending", size=_bytes_so_far(root / (name + PARTIAL_SUFFIX)))
    return None


def export_dir(artifacts_dir: Path, job_id: str, name: str) -> Path:
    """The directory of a ready export: ``NotFound`` if there is none, ``ExportPending`` if still written."""
    export = find_export(artifacts_dir, job_id, name)
    if export is None:
        base = name.removesuffix(ONNX_SUFFIX)
        if base != name and find_export(artifacts_dir, job_id, base) is not None:
            raise NotFound(
                f"job {job_id!r} has no export named {name!r} yet: "
                f"POST /v1/jobs/{job_id}/artifacts/{base}/onnx converts {base!r} into it"
            )
        raise NotFound(f"job {job_id!r} has no export named {name!r}")
    if export.status == "pending":
        raise ExportPending(
            f"export {name!r} is still being written; it can be downloaded once the artifacts list shows it ready",
            extensions={"export_status": "pending"},
        )
    return resolve_inside(job_artifacts_dir(artifacts_dir, job_id), name)


def export_file(artifacts_dir: Path, job_id: str, name: str, path: str) -> Path:
    """A regular file inside a ready export, or ``NotFound`` (also for paths that would leave it)."""
    directory = export_dir(artifacts_dir, job_id, name)
    target = resolve_inside(directory, path)
    if not target.is_file():
        raise NotFound(f"export {name!r} has no file {path!r}")
    return target


def request_trial_export(
    session: Session, celery_app: Celery, artifacts_dir: Path, job_id: str, number: int
) -> tuple[Export, bool]:
    """Ask the worker to export trial ``number``; returns the export and whether a task was sent.

    ``NotFound`` for an unknown job or trial, ``TrialNotExportable`` unless the trial is complete,
    ``Unavailable`` if the broker refuses the task. Nothing is sent when the export is already
    ready or being written (a double click must not start two writers of one directory).
    """
    repository.require_job(session, job_id)
    trial = repository.get_trial(session, job_id, number)
    if trial is None:
        raise NotFound(f"job {job_id!r} has no trial {number}")
    if trial.state != TrialState.COMPLETE.value:
        raise TrialNotExportable(
            f"trial {number} is {trial.state}; only complete trials can be exported",
            extensions={"trial_state": trial.state},
        )
    name = trial_export_name(number)
    existing = find_export(artifacts_dir, job_id, name)
    if existing is not None:
        return existing, False
    _enqueue(lambda: enqueue_export(celery_app, job_id, number), "export", name, job_id)
    return Export(name=name, status="pending"), True


def request_onnx_export(
    session: Session, celery_app: Celery, artifacts_dir: Path, job_id: str, name: str
) -> tuple[Export, bool]:
    """Ask the worker to convert export ``name`` into the ONNX graph ``{name}.onnx``.

    Returns that export and whether a task was sent. ``NotFound`` for an unknown job or export,
    ``ExportPending`` while ``name`` is still written, ``ExportNotConvertible`` for an ONNX export,
    ``Unavailable`` if the broker refuses the task. Nothing is sent when the graph is ready or being
    written.
    """
    repository.require_job(session, job_id)
    source = find_export(artifacts_dir, job_id, name)
    if source is None:
        raise NotFound(f"job {job_id!r} has no export named {name!r}")
    if name.endswith(ONNX_SUFFIX):
        raise ExportNotConvertible(f"export {name!r} is an ONNX graph already")
    export_dir(artifacts_dir, job_id, name)  # ExportPending while it is written
    target = onnx_export_name(name)
    existing = find_export(artifacts_dir, job_id, target)
    if existing is not None:
        return existing, False
    _enqueue(lambda: enqueue_onnx_export(celery_app, job_id, name), "conversion", target, job_id)
    return Export(name=target, status="pending"), True


def _enqueue(send: Callable[[], object], what: str, name: str, job_id: str) -> None:
    """Send a task, or ``Unavailable`` (nothing requested) if the broker refuses it."""
    try:
        send()
    except Exception as error:
        logger.warning("enqueue of %s %s of job %s failed: %s", what, name, job_id, error)
        raise Unavailable(f"the task queue is unreachable; the {what} was not requested, retry later") from error


@dataclass(frozen=True)
class TarStream:
    """An uncompressed tar of one export, produced block by block; ``size`` is its exact length."""

    size: int
    chunks: Iterator[bytes]


def tar_export(artifacts_dir: Path, job_id: str, name: str) -> TarStream:
    """Stream a ready export as a tar whose members sit under ``{name}/``.

    Headers are built up front (they are small), file contents are read in 1 MiB chunks while the
    response is sent, so a multi-gigabyte export never sits in memory. The layout matches what
    ``tarfile`` writes: a header per member, contents padded to 512-byte blocks, two zero blocks,
    padding to a whole 10 KiB record.
    """
    directory = export_dir(artifacts_dir, job_id, name)
    files = _walk(directory)
    mtime = int(directory.stat().st_mtime)
    members: list[tuple[bytes, Path | None, int]] = [(_header(name + "/", tarfile.DIRTYPE, 0, mtime, 0o755), None, 0)]
    for item in files:
        source = directory / item.path
        header = _header(f"{name}/{item.path}", tarfile.REGTYPE, item.size, int(source.stat().st_mtime), 0o644)
        members.append((header, source, item.size))
    body = sum(len(header) + _padded(size) for header, _, size in members) + 2 * tarfile.BLOCKSIZE
    total = _round_up(body, tarfile.RECORDSIZE)
    return TarStream(size=total, chunks=_tar_chunks(members, total - body + 2 * tarfile.BLOCKSIZE))


# --- helpers -------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name) or name.endswith(PARTIAL_SUFFIX):
        raise NotFound(f"no export named {name!r}")


def _split_name(entry: str) -> tuple[str | None, bool]:
    pending = entry.endswith(PARTIAL_SUFFIX)
    name = entry.removesuffix(PARTIAL_SUFFIX) if pending else entry
    if not _NAME.fullmatch(name) or name.endswith(PARTIAL_SUFFIX):
        return None, False
    return name, pending


def _is_dir_inside(root: Path, entry: str) -> bool:
    try:
        return resolve_inside(root, entry).is_dir()
    except NotFound:
        return False


def _ready_export(root: Path, name: str) -> Export:
    directory = resolve_inside(root, name)
    files = _walk(directory)
    return Export(
        name=name,
        status="ready",
        files=files,
        size=sum(item.size for item in files),
        provenance=_provenance(directory),
    )


def _walk(directory: Path) -> list[ExportFile]:
    """Regular files under ``directory`` by path; a symlink counts only if it stays inside."""
    files: list[ExportFile] = []
    for folder, _subfolders, names in os.walk(directory):
        # os.walk does not descend into symlinked folders; symlinked files are checked below.
        here = Path(folder)
        for file_name in names:
            relative = (here / file_name).relative_to(directory).as_posix()
            try:
                target = resolve_inside(directory, relative)
            except NotFound:
                continue
            if target.is_file():
                files.append(ExportFile(path=relative, size=target.stat().st_size))
    return sorted(files, key=lambda item: item.path)


def _bytes_so_far(directory: Path) -> int:
    total = 0
    for folder, _subfolders, names in os.walk(directory):
        for file_name in names:
            try:
                total += (Path(folder) / file_name).stat().st_size
            except OSError:  # renamed or removed while the worker writes
                continue
    return total


def _provenance(directory: Path) -> dict[str, Any] | None:
    path = directory / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("unreadable %s: %s", path, error)
        return None
    return value if isinstance(value, dict) else None


def _header(arcname: str, kind: bytes, size: int, mtime: int, mode: int) -> bytes:
    info = tarfile.TarInfo(arcname)
    info.type = kind
    info.size = size
    info.mtime = mtime
    info.mode = mode
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _tar_chunks(members: list[tuple[bytes, Path | None, int]], trailer: int) -> Iterator[bytes]:
    for header, source, size in members:
        yield header
        if source is None:
            continue
        remaining = size
        with source.open("rb") as handle:
            while remaining > 0:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    # Exports are immutable once ready; a shrinking file is a bug, and a short tar
                    # is better than a silently corrupt one.
                    raise OSError(f"{source} shrank while it was being sent")
                remaining -= len(chunk)
                yield chunk
        if padding := _padded(size) - size:
            yield bytes(padding)
    yield bytes(trailer)


def _padded(size: int) -> int:
    return _round_up(size, tarfile.BLOCKSIZE)


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple
