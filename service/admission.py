"""Admission of a job spec: the server's limits, the folders a job may read, each owner's quota.

Checked on submission, before the spec touches the filesystem (so a refused path never reveals
whether it exists) and before anything is written; workers check the paths again where they open
them. Each refusal is a ``ServiceError`` that names the setting to change. No HTTP here: the
request-level limits (body size, threads) are ``service.api.middleware``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from search.spec import JobSpec, model_kind
from service import repository
from service.errors import (
    InvalidRequest,
    LimitExceeded,
    PathNotAllowed,
    SubmissionRateExceeded,
    TooManyActiveJobs,
)
from service.models import utcnow
from service.settings import Settings

__all__ = [
    "RATE_WINDOW",
    "check_local_paths",
    "check_owner_quota",
    "check_spec_limits",
    "inside_roots",
]

RATE_WINDOW = timedelta(minutes=1)
# A model directory is a few dozen files; a tree this large is not a model, and walking it would
# let one request keep the API busy.
_MAX_ENTRIES_CHECKED = 10_000


def check_spec_limits(spec: JobSpec, settings: Settings) -> None:
    """``n_trials``, calibration size, recovery steps and a latency setting's batch and context within
    the settings; text fields storable as text."""
    calibration = spec.calibration
    breaches = [
        ("n_trials", spec.n_trials, settings.max_trials, "max_trials"),
        ("calibration.n_samples", calibration.n_samples, settings.max_calibration_samples, "max_calibration_samples"),
        (
            "calibration.heldout_samples",
            calibration.heldout_samples,
            settings.max_calibration_samples,
            "max_calibration_samples",
        ),
        ("calibration.seq_len", calibration.seq_len, settings.max_seq_len, "max_seq_len"),
    ]
    if spec.recovery is not None:
        breaches.append(("recovery.steps", spec.recovery.steps, settings.max_recovery_steps, "max_recovery_steps"))
    if spec.uses_latency:
        setting = spec.target.latency
        breaches.append(("target.latency.batch", setting.batch, settings.max_latency_batch, "max_latency_batch"))
        breaches.append(("target.latency.context", setting.context, settings.max_seq_len, "max_seq_len"))
    errors = [
        {"loc": ["body", *field.split(".")], "msg": f"above {setting} = {limit}", "type": setting}
        for field, value, limit, setting in breaches
        if value > limit
    ]
    if errors:
        first = next(b for b in breaches if b[1] > b[2])
        raise LimitExceeded(
            f"{first[0]} {first[1]} is above this server's limit of {first[2]} ({first[3]})"
            + (f", and {len(errors) - 1} more" if len(errors) > 1 else ""),
            extensions={"errors": errors},
        )
    texts = [("model", spec.model), ("revision", spec.revision), ("calibration.source", calibration.source)]
    if spec.recovery is not None:
        texts.append(("recovery.source", spec.recovery.source))
    for field, text in texts:
        if text is not None and not _storable(text):
            raise InvalidRequest(
                f"{field} contains a NUL character or an unpaired surrogate",
                extensions={"errors": [{"loc": ["body", *field.split(".")], "msg": "not text", "type": "not_text"}]},
            )


def _storable(text: str) -> bool:
    # Text columns and file systems refuse NUL; lone surrogates (legal in JSON) are not UTF-8.
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inside_roots(raw: str, roots: Iterable[Path]) -> Path | None:
    """``raw`` resolved (symlinks followed), if it lies in one of ``roots`` (already resolved).

    ``..`` is refused outright, even where it would land inside: a path that climbs is never what
    an honest client means. For a directory, every entry below it must resolve inside the roots
    too, so a symlink inside a model folder cannot point the loader at another file.
    """
    path = Path(raw).expanduser()
    if ".." in path.parts:
        return None
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # symlink loops
        return None
    roots = tuple(roots)
    if not _within(resolved, roots):
        return None
    if resolved.is_dir():
        try:
            for count, entry in enumerate(resolved.rglob("*")):
                if count >= _MAX_ENTRIES_CHECKED or not _within(entry.resolve(), roots):
                    return None
        except (OSError, RuntimeError):
            return None
    return resolved


def _within(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def check_local_paths(spec: JobSpec, settings: Settings, owner: str | None) -> None:
    """Local model directories and calibration sources must lie in ``model_roots``.

    With no roots configured, the anonymous local user (the operator at their own machine) may
    name any path; an owner with an API key may name none.
    """
    roots = settings.model_roots
    if not roots and owner is None:
        return
    named = [("calibration.source", spec.calibration.source)]
    if spec.recovery is not None:
        named.append(("recovery.source", spec.recovery.source))
    if model_kind(spec.model) == "local":
        named.insert(0, ("model", spec.model))
    for field, raw in named:
        if raw is None:
            continue
        if not roots:
            raise PathNotAllowed(
                f"{field}: this server accepts no local paths from API keys; "
                "the operator lists allowed folders in PRUNESEARCH_MODEL_ROOTS",
                extensions={"errors": [{"loc": ["body", *field.split(".")], "msg": "no roots", "type": "path"}]},
            )
        if inside_roots(raw, roots) is None:
            raise PathNotAllowed(
                f"{field} {raw!r} is not inside the folders this server allows (model_roots: "
                f"{', '.join(str(root) for root in roots)}); '..' and symlinks that leave them are refused",
                extensions={"errors": [{"loc": ["body", *field.split(".")], "msg": "outside roots", "type": "path"}]},
            )


def check_owner_quota(session: Session, owner: str | None, settings: Settings) -> None:
    """Per-key concurrency and submission rate. The anonymous local user is not limited."""
    if owner is None:
        return
    active = repository.count_active_jobs(session, owner)
    if active >= settings.max_active_jobs_per_key:
        raise TooManyActiveJobs(
            f"{owner} has {active} queued or running jobs, the most this server allows "
            f"(max_active_jobs_per_key); wait for one to finish or cancel one",
            extensions={"active_jobs": active, "limit": settings.max_active_jobs_per_key},
        )
    now = utcnow()
    count, oldest = repository.submissions_since(session, owner, now - RATE_WINDOW)
    if count >= settings.max_submissions_per_minute:
        # The window slides: a slot frees when the oldest submission in it turns a minute old.
        free_at = (oldest or now) + RATE_WINDOW
        retry_after = max(1, math.ceil((free_at - now).total_seconds()))
        raise SubmissionRateExceeded(
            f"{owner} submitted {count} jobs in the last minute, the most this server allows "
            f"(max_submissions_per_minute); retry in {retry_after} s",
            extensions={"limit": settings.max_submissions_per_minute},
            headers={"Retry-After": str(retry_after)},
        )
