"""The service's error tree. Each class carries its HTTP status and problem type.

Raised anywhere below the routes (repository, submission) and turned into
``application/problem+json`` by one handler in ``service.api.problems``.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: ``status``, ``title`` and ``type`` slug are class attributes; ``detail`` is the message."""

    status: int = 500
    title: str = "Internal Server Error"
    type: str = "internal-error"

    def __init__(
        self, detail: str, *, extensions: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        # Extra problem members (RFC 9457 §3.2), e.g. ``errors`` for validation failures.
        self.extensions: dict[str, Any] = extensions or {}
        # Response headers the status needs: WWW-Authenticate on 401, Retry-After on 429 and 503.
        self.headers: dict[str, str] = headers or {}


class Unauthorized(ServiceError):
    status = 401
    title = "Unauthorized"
    type = "unauthorized"


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


class JobNotResumable(Conflict):
    title = "Job cannot be resumed"
    type = "job-not-resumable"


class RequestTooLarge(ServiceError):
    status = 413
    title = "Request body too large"
    type = "request-too-large"


class InvalidRequest(ServiceError):
    status = 422
    title = "Invalid request"
    type = "invalid-request"


class LimitExceeded(InvalidRequest):
    """A well-formed job this server's limits do not allow (settings, not the schema)."""

    title = "Above this server's limits"
    type = "limit-exceeded"


class PathNotAllowed(InvalidRequest):
    """A job names a local path outside the folders the operator allows (``model_roots``)."""

    title = "Path not allowed"
    type = "path-not-allowed"


class TooManyRequests(ServiceError):
    status = 429
    title = "Too many requests"
    type = "too-many-requests"


class TooManyActiveJobs(TooManyRequests):
    title = "Too many active jobs"
    type = "too-many-active-jobs"


class SubmissionRateExceeded(TooManyRequests):
    title = "Submission rate exceeded"
    type = "submission-rate-exceeded"


class Unavailable(ServiceError):
    status = 503
    title = "Service unavailable"
    type = "unavailable"
