"""The OpenAPI document as the API really answers: every error a route can give, with the error
model ``{"status", "error"}``, instead of FastAPI's 422 ``HTTPValidationError`` (ASCOB answers
400 for invalid input, as the original did). A property-based run of the API against this
document is part of the tests (tests/unit/test_openapi_conformance.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

ERROR_SCHEMA = {
    "type": "object",
    "title": "ErrorPayload",
    "description": "Every error ASCOB answers: the HTTP status and a message for a person.",
    "properties": {"status": {"type": "integer"}, "error": {"type": "string"}},
    "required": ["status", "error"],
}

_WHY = {
    400: "Invalid input (the message names the field), or the operation does not apply",
    401: "Missing, unknown or expired X-Api-Token, or a refused bearer JWT (the message says why)",
    403: "The token lacks the permission",
    404: "No such run, webhook, file or token",
    409: "Conflict with the run's state (a job reporting before ASCOB dispatched it)",
    413: "The request body is over the limit",
    415: "The body is not sent as application/json",
    500: "Unexpected error (logged on the server, without secrets)",
    502: "The backend did not answer a request made on the caller's behalf",
    503: "The repository's database, the lock store or the identity provider's keys (a bearer "
    "JWT) cannot be reached: retry (Retry-After)",
}

# (method, path regex) -> the errors beyond those every authenticated route can give
_ROUTE_ERRORS: list[tuple[str, str, tuple[int, ...]]] = [
    ("*", r"\{runId\}", (404,)),
    ("*", r"^/api/webhooks/", (404,)),
    ("POST", r"^/api/webhooks/runs/\{webhookId\}$", (409,)),
    ("DELETE", r"^/api/security/tokens/", (404,)),
    ("*", r"/refresh$", (502,)),
    ("*", r"/output\.txt$", (502,)),
    ("*", r"^/api/locks$", (503,)),
    ("GET", r"^/api/runs/\{runId\}$", (503,)),
]
_BODY_ERRORS = (413, 415)
_COMMON = (400, 401, 403, 500, 503)


def _errors_of(method: str, path: str, has_body: bool) -> list[int]:
    if path == "/api/health":
        return [500, 503]
    codes = set(_COMMON)
    if has_body:
        codes.update(_BODY_ERRORS)
    for wanted, pattern, extra in _ROUTE_ERRORS:
        if wanted in ("*", method) and re.search(pattern, path):
            codes.update(extra)
    return sorted(codes)


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with the true document (built once)."""
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["ErrorPayload"] = ERROR_SCHEMA
        ref = {"$ref": "#/components/schemas/ErrorPayload"}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                has_body = "requestBody" in operation
                for code in _errors_of(method.upper(), path, has_body):
                    responses.setdefault(
                        str(code),
                        {
                            "description": _WHY[code],
                            "content": {"application/json": {"schema": ref}},
                        },
                    )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
