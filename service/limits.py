"""The server's limits, each refused with a problem+json that names the setting to change.

Body size is enforced before anything parses the request; the rest are checked on submission,
before the job spec touches the filesystem (so a refused path never reveals whether it exists)
and before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search.spec import JobSpec, model_kind
from service import repository
from service.errors import (
    InvalidRequest,
    LimitExceeded,
    PathNotAllowed,
    RequestTooLarge,
    SubmissionRateExceeded,
    TooManyActiveJobs,
)
from service.models import utcnow
from service.problems import problem_response
from service.settings import Settings

__all__ = [
    "RATE_WINDOW",
    "BodySizeLimit",
    "check_local_paths",
    "check_owner_quota",
    "check_spec_limits",
    "inside_roots",
    "install_limits",
]

RATE_WINDOW = timedelta(minutes=1)
# A model directory is a few dozen files; a tree this large is not a model, and walking it would
# let one request keep the API busy.
_MAX_ENTRIES_CHECKED = 10_000


class BodySizeLimit:
    """ASGI middleware: a body over ``max_bytes`` is answered 413 before any of it is parsed.

    A declared ``Content-Length`` over the limit is refused without reading the body; a chunked
    body is counted as it arrives. The accepted body is buffered (it is at most ``max_bytes``,
    and every route reads it whole anyway) and replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send, declared)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away; nothing to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, send, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # waits for the disconnect, as the server's own receive would

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send, declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else "more than that"
        error = RequestTooLarge(
            f"the request body is {size}; this server accepts at most {self.max_bytes} bytes (max_body_bytes)"
        )
        response = problem_response(
            Request(scope),
            status=error.status,
            title=error.title,
            detail=error.detail,
            type_slug=error.type,
            # The unread rest of the body makes the connection unusable for another request.
            headers={"Connection": "close"},
        )
        await response(scope, _nothing_to_receive, send)


async def _nothing_to_receive() -> Message:
    return {"type": "http.disconnect"}


def install_limits(app: FastAPI, settings: Settings) -> None:
    """The body-size limit, and a thread pool that cannot starve the database pool.

    FastAPI runs each ``def`` route and dependency in one shared thread pool (40 threads by
    default) and validates a ``def`` route's response there too, while the request's session still
    holds its connection. With more concurrent requests than threads, every thread can be waiting
    for a connection that only a request waiting for a thread would return: a deadlock until the
    pool times out. (Found by benchmarks/load.py: 200 pollers, every request timed out.) With more
    threads than concurrent requests, a request waiting for a thread always gets one.
    """
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    inner: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        async with inner(asgi_app) as state:
            yield state

    app.router.lifespan_context = lifespan


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects a malformed length before we see it
    return None


def check_spec_limits(spec: JobSpec, settings: Settings) -> None:
    """``n_trials`` and calibration size within the settings; text fields storable as text."""
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
    for field, text in (("model", spec.model), ("revision", spec.revision), ("calibration.source", calibration.source)):
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
