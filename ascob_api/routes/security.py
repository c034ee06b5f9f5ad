"""/api/security: who am I, and API tokens."""

from __future__ import annotations

import re

from fastapi import APIRouter

from ascob_api.deps import IdentityDep, ServicesDep, require
from ascob_api.errors import BadRequest
from ascob_api.security import Identity, Permission, parse_permissions
from ascob_api.wire import (
    CreateTokenRequest,
    CreateTokenResponse,
    TokenDeleted,
    TokenInfo,
    TokenList,
    WhoAmIResponse,
)

router = APIRouter(prefix="/api/security", tags=["security"])

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


@router.get("/whoami", operation_id="whoAmI", response_model=WhoAmIResponse)
async def whoami(identity: IdentityDep) -> WhoAmIResponse:
    """The presented token's identifier and permissions."""
    return WhoAmIResponse(
        authorities=sorted(p.value for p in identity.permissions), identifier=identity.name
    )


@router.get(
    "/tokens", operation_id="listTokens", response_model=TokenList, response_model_by_alias=True
)
async def list_tokens(
    services: ServicesDep, _: Identity = require(Permission.security_token_write)
) -> TokenList:
    """The tokens created through the API: identifier, permissions, expiry (never a secret)."""
    tokens = await services.db.list_tokens()
    return TokenList(
        items=[
            TokenInfo(
                identifier=t.identifier,
                permissions=list(t.permissions),
                created_at=t.created_at,
                expires_at=t.expires_at,
            )
            for t in tokens
        ]
    )


@router.post("/tokens/{identifier}", operation_id="createToken", response_model=CreateTokenResponse)
async def create_token(
    identifier: str,
    body: CreateTokenRequest,
    services: ServicesDep,
    who: Identity = require(Permission.security_token_write),
) -> CreateTokenResponse:
    """Create (or replace) a token; its secret is shown this once and stored hashed."""
    if not _IDENTIFIER.fullmatch(identifier):
        raise BadRequest("identifier must be 1-128 letters, digits, '.', '_', '@' or '-'")
    permissions = [p.value for p in parse_permissions(body.permissions)]
    secret = await services.db.create_token(identifier, permissions, body.expiry_seconds)
    await services.db.audit(
        who.name,
        "token_create",
        target=identifier,
        permissions=permissions,
        expiry_seconds=body.expiry_seconds,
    )
    return CreateTokenResponse(secret=secret)


@router.delete("/tokens/{identifier}", operation_id="deleteToken", response_model=TokenDeleted)
async def delete_token(
    identifier: str, services: ServicesDep, who: Identity = require(Permission.security_token_write)
) -> TokenDeleted:
    """Revoke a token."""
    await services.db.delete_token(identifier)
    await services.db.audit(who.name, "token_revoke", target=identifier)
    return TokenDeleted(identifier=identifier)
