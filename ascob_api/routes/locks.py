"""/api/locks: who holds which lock since when (with its fencing token), and who waits, in order."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import Field, field_serializer

from ascob_api.deps import ServicesDep, require
from ascob_api.security import Identity, Permission
from ascob_api.wire import WireModel
from ascob_flows.clock import wire_time

router = APIRouter(prefix="/api/locks", tags=["locks"])


class LockView(WireModel):
    key: str
    holder: int | None = Field(default=None, serialization_alias="holderRunId")
    since: datetime | None = None
    fencing_token: int | None = Field(default=None, serialization_alias="fencingToken")
    waiting: list[int] = Field(default_factory=list, serialization_alias="waitingRunIds")
    reserved_for: int | None = Field(
        default=None,
        serialization_alias="reservedForRunId",
        description="The earliest waiting run this key is reserved for: no later run may take "
        "it, even while it is free. Null: a later run may take the key when it is free.",
    )

    @field_serializer("since")
    def _wire_time(self, value: datetime | None) -> str | None:
        return wire_time(value)


class LocksResponse(WireModel):
    store: str
    items: list[LockView]


@router.get(
    "", operation_id="listLocks", response_model=LocksResponse, response_model_by_alias=True
)
async def list_locks(
    services: ServicesDep, _: Identity = require(Permission.job_run_read)
) -> LocksResponse:
    """Every held or awaited lock: holder run, since when, fencing token, waiting runs in order,
    and the run a free key is reserved for."""
    infos = await services.locks.snapshot()  # unavailable: 503 (ascob_api.errors)
    return LocksResponse(
        store=services.locks.name,
        items=[
            LockView(
                key=i.key,
                holder=i.holder,
                since=i.since,
                fencing_token=i.token,
                waiting=list(i.waiting),
                reserved_for=i.reserved_for,
            )
            for i in infos
        ],
    )
