"""OpenAPI shaping: every documented error response is ``application/problem+json``.

FastAPI documents extra responses and its automatic 422 as ``application/json`` with its own
``HTTPValidationError`` schema; our handlers answer with ``Problem`` bodies instead, so the
published document is rewritten to say what the API really sends.
"""

from __future__ import annotations

import http
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.problems import PROBLEM_MEDIA_TYPE
from service.api.schemas import FieldError, Problem

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` argument of a route that can fail with these statuses."""
    return {status: {"description": http.HTTPStatus(status).phrase} for status in statuses}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = _with_problems(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _with_problems(schema: dict[str, Any]) -> dict[str, Any]:
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for status, response in operation.get("responses", {}).items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": dict(_PROBLEM_REF)}}
                    if status == "422":
                        response["description"] = "Unprocessable Content"
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    template = "#/components/schemas/{model}"
    problem = Problem.model_json_schema(ref_template=template)
    components.update(problem.pop("$defs", {}))
    components["Problem"] = problem
    components.setdefault("FieldError", FieldError.model_json_schema(ref_template=template))
    # FastAPI's own validation schemas are no longer referenced.
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema
