"""The service's error tree. Each class carries its HTTP status and problem type.

Raised anywhere below the routes (repository, submission) and turned into
``application/problem+json`` by one handler in ``service.problems``.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: ``status``, ``title`` and ``type`` slug are class attributes; ``detail`` is the message."""

    status: int = 500
    title: str = "Internal Server Error"
    type: str = "internal-error"

    def __init__(self, detail: str, *, extensions: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        # Extra problem members (RFC 9457 §3.2), e.g. ``errors`` for validation failures.
        self.extensions: dict[str, Any] = extensions or {}


class MalformedRequest(ServiceError):
    status = 400
    title = "Malformed request"
    type = "malformed-request"


class NotFound(ServiceError):
    status = 404
    title = "Not found"
    type = "not-found"


class Conflict(ServiceError):
    status = 409
    title = "Conflict"
    type = "conflict"


class JobNotCancellable(Conflict):
    title = "Job cannot be cancelled"
    type = "job-not-cancellable"


class InvalidRequest(ServiceError):
    status = 422
    title = "Invalid request"
    type = "invalid-request"


class Unavailable(ServiceError):
    status = 503
    title = "Service unavailable"
    type = "unavailable"
