"""/api/runs: submit, read, refresh, start, stop, resubmit, output, files."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from ascob_api.deps import RunId, ServicesDep, require
from ascob_api.errors import BadRequest
from ascob_api.security import Identity, Permission
from ascob_api.wire import (
    CallbackAttemptView,
    CallbackList,
    CallbackView,
    DryRunLock,
    DryRunResult,
    FileUploaded,
    RunInfo,
    SubmitRequest,
    SubmitResponse,
)
from ascob_flows.errors import InvalidSpec
from ascob_flows.locks import LockStoreUnavailable
from ascob_flows.status import RunStatus
from backends import SpecRejected

router = APIRouter(prefix="/api/runs", tags=["runs"])


@router.post(
    "",
    operation_id="submitRun",
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


@router.post(
    "/validate",
    operation_id="validateRun",
    response_model=DryRunResult,
    response_model_by_alias=True,
)
async def validate(
    body: SubmitRequest,
    services: ServicesDep,
    _: Identity = require(Permission.job_submit),
) -> DryRunResult:
    """Dry run: the checks of a submission and the backend's deep check; creates nothing (no
    run, no flow run, no place in a lock queue). 400 with the body the submission would get."""
    spec, backend_id = await asyncio.to_thread(services.dry_run_spec, body.job_spec)
    backend = services.backends.get(backend_id)
    try:
        checks = await backend.check(spec.labels, spec.parameters)
    except SpecRejected as exc:
        raise InvalidSpec(str(exc)) from None
    held = {info.key: info for info in await services.locks.snapshot()}  # unavailable: 503
    locks = [
        DryRunLock(
            key=lock.key,
            holder_run_id=held[lock.key].holder if lock.key in held else None,
            waiting_run_ids=list(held[lock.key].waiting) if lock.key in held else [],
        )
        for lock in spec.locks
    ]
    return DryRunResult(
        backend_id=backend_id,
        labels=dict(spec.labels),
        parameters=dict(spec.parameters),
        locks=locks,
        would_wait=any(lock.holder_run_id is not None or lock.waiting_run_ids for lock in locks),
        checks=checks,
    )


@router.api_route("/validate", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def validate_other_methods() -> JSONResponse:
    """``/api/runs/validate`` is not a run id: other methods are 405, not a 400 about runId."""
    return JSONResponse(
        {"status": 405, "error": "Method Not Allowed: POST only"},
        status_code=405,
        headers={"Allow": "POST"},
    )


@router.get("/{runId}", operation_id="getRun", response_model=RunInfo, response_model_by_alias=True)
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


@router.get(
    "/{runId}/refresh",
    operation_id="getRefreshRun",
    response_model=RunInfo,
    response_model_by_alias=True,
)
@router.post(
    "/{runId}/refresh",
    operation_id="refreshRun",
    response_model=RunInfo,
    response_model_by_alias=True,
)
async def refresh(
    runId: RunId, services: ServicesDep, who: Identity = require(Permission.job_run_refresh)
) -> RunInfo:
    """Ask the backend for the job's status now, and return the run."""
    return await services.refresh(runId, who.name)


@router.get(
    "/{runId}/start",
    operation_id="getStartRun",
    response_model=RunInfo,
    response_model_by_alias=True,
)
@router.post(
    "/{runId}/start", operation_id="startRun", response_model=RunInfo, response_model_by_alias=True
)
async def start(
    runId: RunId, services: ServicesDep, who: Identity = require(Permission.job_run_manual_start)
) -> RunInfo:
    """Start a manual-start run that is still DEFINED."""
    return RunInfo.of(await asyncio.to_thread(services.start, runId, who.name))


@router.delete(
    "/{runId}", operation_id="stopRun", response_model=RunInfo, response_model_by_alias=True
)
async def stop(
    runId: RunId,
    services: ServicesDep,
    force: bool = False,
    who: Identity = require(Permission.job_run_abort),
) -> RunInfo:
    """Stop a run: ABORTED at once if not dispatched yet, else ABORTING until the backend stops."""
    return RunInfo.of(await services.abort(runId, force, who.name))


@router.get(
    "/{runId}/resubmit",
    operation_id="getResubmitRun",
    response_model=SubmitResponse,
    response_model_by_alias=True,
)
@router.post(
    "/{runId}/resubmit",
    operation_id="resubmitRun",
    response_model=SubmitResponse,
    response_model_by_alias=True,
)
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


@router.get("/{runId}/output.txt", operation_id="getRunOutput", response_class=PlainTextResponse)
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
    operation_id="uploadRunFile",
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


@router.get(
    "/{runId}/callbacks",
    operation_id="listRunCallbacks",
    response_model=CallbackList,
    response_model_by_alias=True,
)
async def callbacks(
    runId: RunId, services: ServicesDep, _: Identity = require(Permission.job_run_read)
) -> CallbackList:
    """The delivery of the run's callback: state, attempts, last answer or error, and each
    attempt (when, the HTTP status or the error)."""
    await services.db.get_run(runId)
    deliveries = await services.db.callbacks_of(runId)
    attempts = await services.db.callback_attempts_of([d.id for d in deliveries if d.id])
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
                attempt_log=[
                    CallbackAttemptView(at=a.at, status=a.status, error=a.error)
                    for a in attempts.get(d.id or 0, [])
                ],
            )
            for d in deliveries
        ]
    )
