"""Tokens, the caller, the audit and the error body."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field as PField
from pydantic import (
    field_serializer,
)

from ascob_api.wire.base import InputModel, WireModel
from ascob_flows.clock import wire_time

MAX_TOKEN_EXPIRY = 10 * 366 * 24 * 3600


class CreateTokenRequest(InputModel):
    permissions: list[str] = PField(default_factory=list)
    expiry_seconds: int = PField(
        default=0,
        alias="expirySeconds",
        strict=True,
        ge=0,
        le=MAX_TOKEN_EXPIRY,
        description="Seconds until the token expires (at most ten years); 0: never.",
    )


class CreateTokenResponse(WireModel):
    secret: str


class TokenDeleted(WireModel):
    identifier: str
    status: str = "deleted"


class WhoAmIResponse(WireModel):
    authorities: list[str]
    identifier: str | None = PField(
        default=None,
        description="The token's identifier (root, job-manager-N, webhook-N, or the name it was "
        "created with).",
    )


class AuditEntry(WireModel):
    id: int
    at: datetime
    actor: str
    action: str
    run_id: int | None = PField(default=None, serialization_alias="runId")
    target: str | None = None
    details: dict[str, Any] = PField(default_factory=dict)

    @field_serializer("at")
    def _wire_time(self, value: datetime) -> str | None:
        return wire_time(value)


class AuditResponse(WireModel):
    items: list[AuditEntry]


class TokenInfo(WireModel):
    identifier: str
    permissions: list[str]
    created_at: datetime = PField(serialization_alias="createdAt")
    expires_at: datetime | None = PField(default=None, serialization_alias="expiresAt")

    @field_serializer("created_at", "expires_at")
    def _wire_time(self, value: datetime | None) -> str | None:
        return wire_time(value)


class TokenList(WireModel):
    items: list[TokenInfo]


class ErrorPayload(WireModel):
    status: int
    error: str
