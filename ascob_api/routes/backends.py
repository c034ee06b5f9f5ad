"""/api/backends: the backends this process found, and those that failed to load."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from ascob_api.deps import ServicesDep, require
from ascob_api.security import Identity, Permission

router = APIRouter(prefix="/api/backends", tags=["backends"])


class BackendInfo(BaseModel):
    id: str
    state: str
    error: str | None = None
    instances: list[str] = []


@router.get("", operation_id="listBackends", response_model=list[BackendInfo])
async def list_backends(
    services: ServicesDep, _: Identity = require(Permission.job_run_read)
) -> list[BackendInfo]:
    """Every backend registered under ``ascob.backends``: loaded or failed (with the error)."""
    return [
        BackendInfo(id=s.id, state=s.state, error=s.error, instances=list(s.instances))
        for s in services.backends.states
    ]
