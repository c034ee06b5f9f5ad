"""/api/runs: submit, read, refresh, start, stop, resubmit, output, files."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse

from ascob_api.deps import RunId, ServicesDep, require
from ascob_api.errors import BadRequest
from ascob_api.security import Identity, Permission
from ascob_api.wire import (
    CallbackList,
    CallbackView,
    FileUploaded,
    RunInfo,
    SubmitRequest,
    SubmitResponse,
)
from ascob_flows.locks import LockStoreUnavailable
from ascob_flows.status import RunStatus

router = APIRouter(prefix="/api/runs", tags=["runs"])


@router.post(
    "",
    response_model=SubmitResponse,
    response_model_by_alias=True,
    responses={
        200: {
            "headers": {
                "Idempotent-Replayed": {
                    "description": "true when this answers an earlier submission with the same "
                    "Idempotency-Key (no new run)",
                    "schema": {"type": "string", "enum": ["true", "false"]},
                }
            }
        },
        409: {"description": "The Idempotency-Key was used with another job spec"},
    },
)
async def submit(
    body: SubmitRequest,
    services: ServicesDep,
    response: Response,
    identity: Identity = require(Permission.job_submit),
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Submitting again with the same key and body (same token) returns the "
            "same runId instead of a new run; kept at least 24 h.",
        ),
    ] = None,
) -> SubmitResponse:
    """Submit a job: record the run and start it (unless manualStart). Answers at once."""
    if body.job_spec.manual_start:
        identity.require(Permission.job_run_manual_start)
    body.job_spec.submitter = identity.submitter_for(body.job_spec.submitter)
    run, replayed = await asyncio.to_thread(
        services.submit, body.job_spec, identity.name, idempotency_key
    )
    assert run.id is not None
    response.headers["Idempotent-Replayed"] = str(replayed).lower()
    return SubmitResponse(run_id=run.id)


@router.get("/{runId}", response_model=RunInfo, response_model_by_alias=True)
async def get_run(
    runId: RunId, services: ServicesDep, _: Identity = require(Permission.job_run_read)
) -> RunInfo:
    """The run's status and times; a run waiting for locks also says which runs it waits for."""
    info = RunInfo.of(await services.db.get_run(runId))
    if info.status is RunStatus.WAITING_LOCKS:
        try:
            info.waiting_for = await services.locks.waiting_for(runId)
        except LockStoreUnavailable:
            pass  # the original fields still answer
    return info


@router.get("/{runId}/refresh", response_model=RunInfo, response_model_by_alias=True)
@router.post("/{runId}/refresh", response_model=RunInfo, response_model_by_alias=True)
async def refresh(
    runId: RunId, services: ServicesDep, who: Identity = require(Permission.job_run_refresh)
) -> RunInfo:
    """Ask the backend for the job's status now, and return the run."""
    return await services.refresh(runId, who.name)


@router.get("/{runId}/start", response_model=RunInfo, response_model_by_alias=True)
@router.post("/{runId}/start", response_model=RunInfo, response_model_by_alias=True)
async def start(
    runId: RunId, services: ServicesDep, who: Identity = require(Permission.job_run_manual_start)
) -> RunInfo:
    """Start a manual-start run that is still DEFINED."""
    return RunInfo.of(await asyncio.to_thread(services.start, runId, who.name))


@router.delete("/{runId}", response_model=RunInfo, response_model_by_alias=True)
async def stop(
    runId: RunId,
    services: ServicesDep,
    force: bool = False,
    who: Identity = require(Permission.job_run_abort),
) -> RunInfo:
    """Stop a run: ABORTED at once if not dispatched yet, else ABORTING until the backend stops."""
    return RunInfo.of(await services.abort(runId, force, who.name))


@router.get("/{runId}/resubmit", response_model=SubmitResponse, response_model_by_alias=True)
@router.post("/{runId}/resubmit", response_model=SubmitResponse, response_model_by_alias=True)
async def resubmit(
    runId: RunId,
    services: ServicesDep,
    submitter: Annotated[str, Query(min_length=1)],
    who: Identity = require(Permission.job_run_resubmit),
) -> SubmitResponse:
    """Run the same spec again for a new submitter; parentId is the root run."""
    submitter = who.submitter_for(submitter) or submitter
    run = await asyncio.to_thread(services.resubmit, runId, submitter, who.name)
    assert run.id is not None
    return SubmitResponse(run_id=run.id)


@router.get("/{runId}/output.txt", response_class=PlainTextResponse)
async def output(
    runId: RunId,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    _: Identity = require(Permission.job_run_output),
) -> PlainTextResponse:
    """The backend's output from byte ``offset``; headers give the next offset and if more comes."""
    text, next_offset, more = await services.output(runId, offset)
    return PlainTextResponse(
        text,
        headers={"X-Ascob-Next-Offset": str(next_offset), "X-Ascob-More": str(more).lower()},
    )


@router.post(
    "/{runId}/files/{fileId}",
    response_model=FileUploaded,
    response_model_by_alias=True,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload(
    runId: RunId,
    fileId: str,
    request: Request,
    services: ServicesDep,
    who: Identity = require(Permission.job_run_upload_files),
) -> FileUploaded:
    """Attach an input file (raw body) to a run that is still DEFINED."""
    limit = services.settings.max_file_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"file is {declared} bytes; the limit is {limit}")
    content = await request.body()
    await asyncio.to_thread(services.upload, runId, fileId, content, who.name)
    return FileUploaded(run_id=runId, file_id=fileId, size=len(content))


@router.get("/{runId}/callbacks", response_model=CallbackList, response_model_by_alias=True)
async def callbacks(
    runId: RunId, services: ServicesDep, _: Identity = require(Permission.job_run_read)
) -> CallbackList:
    """The delivery of the run's callback: state, attempts, last answer or error."""
    await services.db.get_run(runId)
    deliveries = await services.db.callbacks_of(runId)
    return CallbackList(
        items=[
            CallbackView(
                url=d.url,
                state=d.state,
                attempts=d.attempts,
                last_attempt_at=d.last_attempt_at,
                last_status=d.last_status,
                last_error=d.last_error,
                next_attempt_at=d.next_attempt_at if d.state == "pending" else None,
                delivered_at=d.delivered_at,
            )
            for d in deliveries
        ]
    )
