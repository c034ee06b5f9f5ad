"""/api/search/runs."""

from __future__ import annotations

from fastapi import APIRouter

from ascob_api.deps import ServicesDep, require
from ascob_api.security import Identity, Permission
from ascob_api.wire import RunInfo, SearchRunRequest, SearchRunResponse

router = APIRouter(prefix="/api/search", tags=["search"])


@router.post(
    "/runs",
    operation_id="searchRuns",
    response_model=SearchRunResponse,
    response_model_by_alias=True,
)
async def search_runs(
    body: SearchRunRequest,
    services: ServicesDep,
    _: Identity = require(Permission.job_run_search),
) -> SearchRunResponse:
    """Runs matching every filter given, newest first, at most the server's cap."""
    cap = services.settings.max_search_results
    limit = min(body.max_results or cap, cap)
    runs = await services.db.search(
        submitter=body.submitter_filter,
        statuses=body.status_filter,
        created_after=body.created_after_filter,
        created_before=body.created_before_filter,
        limit=limit,
    )
    return SearchRunResponse(items=[RunInfo.of(r) for r in runs])
