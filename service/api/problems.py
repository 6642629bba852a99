"""The single choke point where errors become ``application/problem+json`` (RFC 9457).

Every error that leaves the API goes through one of these handlers: our ``ServiceError`` tree,
``search``'s ``SearchError`` (a job the library cannot run), request validation, Starlette's HTTP
errors (unknown route, wrong method) and, last, anything unexpected (500, logged, no traceback).
"""

from __future__ import annotations

import http
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from search.errors import SearchError
from service.errors import InvalidRequest, MalformedRequest, ServiceError, Unavailable
from service.jsonsafe import scrub

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:prunesearch:problem:"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem_response(
    request: Request,
    *,
    status: int,
    title: str,
    detail: str,
    type_slug: str | None,
    extensions: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> ProblemResponse:
    body: dict[str, Any] = {
        # "about:blank" is RFC 9457's type for a plain HTTP error with no further semantics.
        "type": PROBLEM_TYPE_PREFIX + type_slug if type_slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    for key, value in (extensions or {}).items():
        body.setdefault(key, scrub(value))
    return ProblemResponse(body, status_code=status, headers=headers)


def _from_service_error(request: Request, error: ServiceError) -> ProblemResponse:
    return problem_response(
        request,
        status=error.status,
        title=error.title,
        detail=error.detail,
        type_slug=error.type,
        extensions=error.extensions,
        headers=error.headers or None,
    )


async def _service_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, ServiceError)
    return _from_service_error(request, exc)


async def _search_error(request: Request, exc: Exception) -> ProblemResponse:
    # The library's messages are written for the person who submitted the job.
    extensions: dict[str, Any] = {"error_class": type(exc).__name__}
    field = getattr(exc, "field", None)  # InvalidJobSpec names the spec field at fault, when one is
    if field:
        extensions["errors"] = [{"loc": ["body", *field.split(".")], "msg": str(exc), "type": "invalid_job"}]
    error = InvalidRequest(str(exc), extensions=extensions)
    return _from_service_error(request, error)


def _field_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # Only loc/msg/type: "input" may echo NaN or huge bodies, "ctx" may hold exception objects.
    return [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in errors
    ]


def _summary(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts) or "the request is invalid"


async def _validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    raw = list(exc.errors())
    invalid_json = [error for error in raw if error.get("type") == "json_invalid"]
    if invalid_json:
        reason = (invalid_json[0].get("ctx") or {}).get("error", "decode error")
        position = invalid_json[0].get("loc", ("body", "?"))[-1]
        return _from_service_error(
            request, MalformedRequest(f"request body is not valid JSON: {reason} at character {position}")
        )
    errors = _field_errors(raw)
    detail = _not_json_hint(request, errors) or _summary(errors)
    return _from_service_error(request, InvalidRequest(detail, extensions={"errors": errors}))


def _not_json_hint(request: Request, errors: list[dict[str, Any]]) -> str | None:
    """What to add when a body was refused as a whole because it was not sent as JSON.

    FastAPI parses a body as JSON only under a JSON media type; otherwise the job arrives as raw
    text and fails as "Input should be a valid dictionary", which does not say what went wrong.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return None
    if not any(error["loc"] == ["body"] for error in errors):
        return None
    sent = f"Content-Type {media_type[:100]!r}" if media_type else "no Content-Type"
    return f"send the job as JSON with the header Content-Type: application/json (this request has {sent})"


async def _http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = http.HTTPStatus(exc.status_code).phrase
    detail = str(exc.detail) if exc.detail is not None else title
    if exc.status_code == 404 and detail == title:
        detail = f"no resource at {request.url.path}"
    elif exc.status_code == 405 and detail == title:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(
        request, status=exc.status_code, title=title, detail=detail, type_slug=None, headers=exc.headers
    )


# Seconds a client should wait after the database dropped its connection (a restart, a failover).
DATABASE_RETRY_AFTER_S = 2


async def _database_error(request: Request, exc: Exception) -> ProblemResponse:
    # A dropped or refused connection, or no free connection in time, is the database's state, not
    # a bug: answer 503 so clients retry. The pool pings before reuse, so the next request gets a
    # fresh connection.
    transient = isinstance(exc, OperationalError | PoolTimeout) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
    if not transient:
        return await _unexpected_error(request, exc)
    logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    error = Unavailable(
        "the database is unavailable; retry shortly", headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)}
    )
    return _from_service_error(request, error)


async def _unexpected_error(request: Request, exc: Exception) -> ProblemResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request,
        status=500,
        title="Internal Server Error",
        detail="an unexpected error occurred; it has been logged",
        type_slug="internal-error",
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(SearchError, _search_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
