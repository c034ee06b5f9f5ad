"""Request dependencies as ``Annotated`` aliases, so handlers read like their signature."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ascob_api.errors import BadRequest, Unauthorized
from ascob_api.oidc import OidcVerifier
from ascob_api.security import Identity, Permission, TokenChecker
from ascob_api.service import Services

_api_key = APIKeyHeader(name="X-Api-Token", auto_error=False, description="ASCOB API token")
_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="An OIDC access token of the identity provider ASCOB_OIDC_ISSUER names "
    "(when configured; see docs/api.md, Signing in from a portal)",
)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_identity(
    request: Request,
    secret: str | None = Depends(_api_key),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> Identity:
    """X-Api-Token when given (as before), else an ``Authorization: Bearer`` JWT."""
    if secret or bearer is None:
        checker: TokenChecker = request.app.state.tokens
        return await run_in_threadpool(checker.identify, secret)  # a repository read
    verifier: OidcVerifier | None = request.app.state.oidc
    if verifier is None:
        raise Unauthorized(
            "bearer tokens are not accepted here: OIDC is not configured (ASCOB_OIDC_ISSUER); "
            "use the X-Api-Token header"
        )
    return await verifier.identify(bearer.credentials)


ServicesDep = Annotated[Services, Depends(get_services)]
RunId = Annotated[
    int,
    Path(ge=-(2**63), le=2**63 - 1, description="The run's id (a 64-bit integer)."),
]
IdentityDep = Annotated[Identity, Depends(get_identity)]


def known_query_only(request: Request) -> None:
    """Refuse a query parameter the route does not take (a misspelt filter is an error, not a
    silently wider answer). Installed on the whole app."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    names: set[str] = set()
    stack = [dependant]
    while stack:
        current = stack.pop()
        names.update(p.alias for p in current.query_params)
        stack.extend(current.dependencies)
    unknown = sorted(k for k in request.query_params if k not in names)
    if unknown:
        accepted = ", ".join(sorted(names)) or "none"
        raise BadRequest(f"unknown query parameter {', '.join(unknown)}; accepted: {accepted}")


def require(permission: Permission) -> Any:
    """A dependency that refuses tokens without ``permission`` (403)."""

    def check(identity: IdentityDep) -> Identity:
        identity.require(permission)
        return identity

    return Depends(check)
