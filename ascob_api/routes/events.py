"""/api/runs/{runId}/events: the run's status changes and output lines as server-sent events.

Events: ``status`` (data: the RunInfo as JSON) whenever the status changes, ``output`` (data: one
line of output, without its newline) as the backend prints, and a last ``end`` (data: the final
RunInfo) once the run is final and its output complete. A client that reconnects may pass
``offset`` (the output byte offset it had reached, as in ``output.txt``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from ascob_api.deps import RunId, ServicesDep, require
from ascob_api.errors import AscobError
from ascob_api.models import RunInfo
from ascob_api.security import Identity, Permission
from ascob_api.service import Services
from ascob_flows.status import RunStatus

router = APIRouter(prefix="/api/runs", tags=["runs"])
log = logging.getLogger("ascob.api")

_MAX_ROUNDS_AFTER_END = 10  # a final run whose backend still says "more output" ends anyway


async def run_events(
    services: Services, run_id: int, offset: int, interval: float
) -> AsyncIterator[ServerSentEvent]:
    """Poll the run and its output; yield what changed, until the run ends."""
    last_status: str | None = None
    pending = ""  # a line the backend has not finished yet
    seen_prefix: tuple[int, str] | None = None
    rounds_after_end = 0
    while True:
        run = await asyncio.to_thread(services.repo.get_run, run_id)
        info = RunInfo.of(run)
        if run.status != last_status:
            last_status = run.status
            yield ServerSentEvent(info.model_dump_json(by_alias=True), event="status")
        final = RunStatus(run.status).is_final
        more = not final
        try:
            text, next_offset, more = await services.output(run_id, offset)
        except AscobError as exc:  # the backend did not answer: try again next round
            log.warning("run %s: events: %s", run_id, exc.message)
            text, next_offset = "", offset
        if next_offset == offset and seen_prefix == (offset, text):
            text = ""  # the same text again at the same offset (a message before dispatch)
        else:
            seen_prefix = (offset, text) if next_offset == offset else None
        offset = next_offset
        *lines, pending = (pending + text).split("\n")
        for line in lines:
            yield ServerSentEvent(line, event="output")
        if final:
            rounds_after_end += 1
        if final and (not more or rounds_after_end > _MAX_ROUNDS_AFTER_END):
            if pending:
                yield ServerSentEvent(pending, event="output")
            yield ServerSentEvent(info.model_dump_json(by_alias=True), event="end")
            return
        await asyncio.sleep(interval)


@router.get("/{runId}/events")
async def events(
    runId: RunId,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    interval: Annotated[float, Query(ge=0.2, le=30)] = 1.0,
    _: Identity = require(Permission.job_run_output),
) -> EventSourceResponse:
    """Server-sent events: status changes and output lines of the run, until it ends."""
    await asyncio.to_thread(services.repo.get_run, runId)  # 404 now, not inside the stream
    return EventSourceResponse(run_events(services, runId, offset, interval), ping=15)
