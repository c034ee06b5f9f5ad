"""/api/audit and /api/runs/{runId}/audit: who did what to runs and tokens, newest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from ascob_api.deps import RunId, ServicesDep, require
from ascob_api.errors import BadRequest
from ascob_api.models import AuditEvent
from ascob_api.security import Identity, Permission
from ascob_api.wire import AuditEntry, AuditResponse

router = APIRouter(tags=["audit"])


def _entries(events: list[AuditEvent]) -> AuditResponse:
    return AuditResponse(
        items=[
            AuditEntry(
                id=e.id or 0,
                at=e.at,
                actor=e.actor,
                action=e.action,
                run_id=e.run_id,
                target=e.target,
                details=e.details,
            )
            for e in events
        ]
    )


def _utc(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"{name}: expected a date-time such as 2026-11-30T12:00:00 (UTC)"
        ) from None
    return parsed if parsed.utcoffset() is not None else parsed.replace(tzinfo=UTC)


_TIME = {"format": "date-time"}


@router.get(
    "/api/audit",
    operation_id="searchAudit",
    response_model=AuditResponse,
    response_model_by_alias=True,
)
async def search_audit(
    services: ServicesDep,
    _: Identity = require(Permission.audit_read),
    actor: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    runId: Annotated[int | None, Query(ge=-(2**63), le=2**63 - 1)] = None,
    after: Annotated[
        str | None, Query(description="strictly after (UTC)", json_schema_extra=_TIME)
    ] = None,
    before: Annotated[
        str | None, Query(description="strictly before (UTC)", json_schema_extra=_TIME)
    ] = None,
    maxResults: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> AuditResponse:
    """Audit events matching every filter given, newest first."""
    events = await services.db.search_audit(
        actor=actor,
        action=action,
        run_id=runId,
        after=_utc("after", after),
        before=_utc("before", before),
        limit=maxResults,
    )
    return _entries(events)


@router.get(
    "/api/runs/{runId}/audit",
    operation_id="getRunAudit",
    response_model=AuditResponse,
    response_model_by_alias=True,
)
async def run_audit(
    runId: RunId, services: ServicesDep, _: Identity = require(Permission.audit_read)
) -> AuditResponse:
    """Who did what to this run: submit, start, stop, resubmit, refresh, upload, webhook reports."""
    await services.db.get_run(runId)  # 404 for an unknown run
    return _entries(await services.db.search_audit(run_id=runId))
