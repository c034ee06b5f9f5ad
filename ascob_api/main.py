"""The FastAPI application: routes, error mapping, OpenAPI (JSON, YAML, Swagger UI)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import yaml
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ascob_api import __version__, openapi
from ascob_api.callbacks import CallbackSender
from ascob_api.deps import known_query_only
from ascob_api.errors import (
    DOMAIN_ERRORS,
    AscobError,
    KeysUnavailable,
    Unauthorized,
    domain_message,
    http_status,
)
from ascob_api.limits import RequestLimits
from ascob_api.oidc import OidcVerifier
from ascob_api.routes import audit, backends, events, locks, runs, search, security, webhooks
from ascob_api.security import TokenChecker
from ascob_api.service import Services

log = logging.getLogger("ascob.api")

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": status, "error": message}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            msg = f"malformed JSON ({ctx.get('error', 'cannot parse')})"
            loc = "body"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts) or "invalid request"


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _with_callbacks(services: Services, inner: Lifespan | None) -> Lifespan:
    """Every API process sends the callbacks that are due (ascob_api.callbacks)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sender = asyncio.create_task(
            CallbackSender(services.settings, services.repo).run(), name="callbacks"
        )
        try:
            if inner is None:
                yield
            else:
                async with inner(app):
                    yield
        finally:
            sender.cancel()
            with suppress(asyncio.CancelledError):
                await sender

    return lifespan


def create_app(services: Services, lifespan: Lifespan | None = None) -> FastAPI:
    # Swagger UI and ReDoc served from assets shipped in fastapi-offline: no external URL
    app = FastAPIOffline(
        title="ASCOB API",
        version=__version__,
        description="One front door from automation portals to Jenkins, Rundeck and friends.",
        lifespan=_with_callbacks(services, lifespan),
        dependencies=[Depends(known_query_only)],
    )
    app.state.services = services
    app.state.tokens = TokenChecker(services.settings, services.repo)
    app.state.oidc = OidcVerifier(services.settings) if services.settings.oidc_enabled else None
    app.add_middleware(
        RequestLimits,
        max_request_bytes=services.settings.max_request_bytes,
        max_file_bytes=services.settings.max_file_bytes,
    )
    for module in (runs, events, search, webhooks, security, backends, locks, audit):
        app.include_router(module.router)

    @app.exception_handler(AscobError)
    async def _ascob_error(_: Request, exc: AscobError) -> JSONResponse:
        headers = None
        if isinstance(exc, KeysUnavailable):
            headers = {"Retry-After": "5"}
        elif isinstance(exc, Unauthorized) and services.settings.oidc_enabled:
            headers = {"WWW-Authenticate": 'Bearer realm="ascob"'}
        return _error(exc.status_code, exc.message, headers)

    for kind in DOMAIN_ERRORS:

        @app.exception_handler(kind)
        async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
            return _error(http_status(exc), domain_message(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only the first route's
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _error(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
        # PostgreSQL restarting, a failover, a lost connection: the caller should retry
        log.warning(
            "%s %s: the repository's database does not answer: %s",
            request.method,
            request.url.path,
            str(exc.orig).splitlines()[0] if exc.orig else exc,
        )
        return _error(
            503, "the repository's database does not answer; retry shortly", {"Retry-After": "2"}
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unexpected error on %s %s: %r", request.method, request.url.path, exc, exc_info=exc
        )
        return _error(500, "internal error; see the server log")

    @app.get("/openapi.yaml", include_in_schema=False)
    async def openapi_yaml() -> Response:
        return Response(
            yaml.safe_dump(app.openapi(), sort_keys=False), media_type="application/yaml"
        )

    @app.get("/api/health", operation_id="health", tags=["health"])
    async def health() -> dict[str, Any]:
        """Liveness: answers without a token."""
        return {"status": "ok"}

    openapi.install(app)
    return app
