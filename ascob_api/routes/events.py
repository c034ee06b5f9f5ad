"""/api/runs/{runId}/events: the run's status changes and output lines as server-sent events.

Events: ``status`` (data: the RunInfo as JSON) whenever the status changes, ``output`` (data: one
line of output, without its newline) as the backend prints, and a last ``end`` (data: the final
RunInfo) once the run is final and its output complete.

Every event carries its own ``id:``, which starts with the output byte offset (as in
``output.txt``) reached after it: an output line that moved the offset has that offset alone
(``17``); an event that did not (a status, the end, ASCOB's own lines) has it followed by a dot
and the event's number in the stream (``17.5``), so no two events share an id. A client that
reconnects sends it back as ``Last-Event-ID`` (a browser's EventSource does so by itself) or the
offset as ``offset``, and the stream resumes after that offset: the current status first, then
the output lines from there, none repeated, none lost.

A browser's ``EventSource`` cannot send the ``X-Api-Token`` header: the page asks its backend for a
short-lived, run-scoped, read-only ticket (``POST /api/runs/{runId}/events/ticket``) and opens
``/api/runs/{runId}/events?ticket=...`` with it. Long-lived tokens never go into URLs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from ascob_api.deps import RunId, ServicesDep, require
from ascob_api.errors import AscobError, BadRequest, Unauthorized
from ascob_api.security import Identity, Permission
from ascob_api.service import Services
from ascob_api.wire import EventsTicket, RunInfo
from ascob_flows.status import RunStatus

router = APIRouter(prefix="/api/runs", tags=["runs"])
log = logging.getLogger("ascob.api")

_MAX_ROUNDS_AFTER_END = 10  # a final run whose backend still says "more output" ends anyway


async def run_events(
    services: Services, run_id: int, offset: int, interval: float
) -> AsyncIterator[ServerSentEvent]:
    """Poll the run and its output; yield what changed, until the run ends. Each event's id is
    the backend output offset up to the end of the last complete line sent, followed by
    ``.<number of the event>`` when the event did not move that offset."""
    last_status: str | None = None
    sent = 0  # events sent so far: numbers the ones that share an offset
    last_offset_id = offset  # the offset the last bare id named

    def event_id(moved: bool) -> str:
        nonlocal sent, last_offset_id
        sent += 1
        if moved and consumed != last_offset_id:
            last_offset_id = consumed
            return str(consumed)
        return f"{consumed}.{sent}"

    pending = ""  # a line the backend has not finished yet
    seen_prefix: tuple[int, str] | None = None
    rounds_after_end = 0
    consumed = offset  # backend bytes covered by the lines sent so far
    while True:
        run = await services.db.get_run(run_id)
        info = RunInfo.of(run)
        if run.status != last_status:
            last_status = run.status
            yield ServerSentEvent(
                info.model_dump_json(by_alias=True), event="status", id=event_id(False)
            )
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
        # ASCOB's own "[ascob] ..." lines come before the backend's bytes, at offset 0 only
        backend_bytes = next_offset - offset
        ours = len(text.encode()) - backend_bytes if offset == 0 else 0
        offset = next_offset
        *lines, pending = (pending + text).split("\n")
        for line in lines:
            size = len(line.encode()) + 1
            moved = ours <= 0
            if moved:
                consumed += size
            else:
                ours -= size
            yield ServerSentEvent(line, event="output", id=event_id(moved))
        if final:
            rounds_after_end += 1
        if final and (not more or rounds_after_end > _MAX_ROUNDS_AFTER_END):
            if pending:
                consumed += len(pending.encode())
                yield ServerSentEvent(pending, event="output", id=event_id(True))
            yield ServerSentEvent(
                info.model_dump_json(by_alias=True), event="end", id=event_id(False)
            )
            return
        await asyncio.sleep(interval)


TICKET_SECONDS = 60


def _ticket_key(services: Services) -> bytes:
    # every API replica of an installation shares the root token, so any of them verifies it
    root = services.settings.root_token or ""
    return hashlib.sha256(f"ascob-events-ticket:{root}".encode()).digest()


def make_ticket(services: Services, run_id: int, now: float | None = None) -> str:
    expires = int((now or time.time()) + TICKET_SECONDS)
    payload = f"{run_id}.{expires}"
    sig = hmac.new(_ticket_key(services), payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{sig}"


def check_ticket(services: Services, run_id: int, ticket: str) -> None:
    try:
        rid, expires, sig = ticket.split(".")
        good = hmac.new(_ticket_key(services), f"{rid}.{expires}".encode(), hashlib.sha256)
        valid = hmac.compare_digest(good.hexdigest(), sig) and int(rid) == run_id
        fresh = int(expires) >= time.time()
    except ValueError:
        valid = fresh = False
    if not valid:
        raise Unauthorized("invalid events ticket (it is for one run only)")
    if not fresh:
        raise Unauthorized("the events ticket has expired: ask for a new one")


def _api_key(request: Request) -> str | None:
    return request.headers.get("x-api-token")


@router.post(
    "/{runId}/events/ticket",
    operation_id="createEventsTicket",
    response_model=EventsTicket,
    response_model_by_alias=True,
)
async def events_ticket(
    runId: RunId, services: ServicesDep, _: Identity = require(Permission.job_run_output)
) -> EventsTicket:
    """A ticket valid 60 s that lets a browser's EventSource open this run's events (and nothing
    else) without a token: ``GET /api/runs/{runId}/events?ticket=...``."""
    await services.db.get_run(runId)
    return EventsTicket(ticket=make_ticket(services, runId), expires_in=TICKET_SECONDS)


@router.get(
    "/{runId}/events",
    operation_id="streamRunEvents",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def events(
    runId: RunId,
    request: Request,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    interval: Annotated[float, Query(ge=0.2, le=30)] = 1.0,
    ticket: Annotated[
        str | None, Query(max_length=200, description="from POST .../events/ticket")
    ] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> EventSourceResponse:
    """Server-sent events: status changes and output lines of the run, until it ends. Resumes
    after ``Last-Event-ID`` (or ``offset``). Authenticated by X-Api-Token or a ticket."""
    if ticket is not None and _api_key(request) is None:
        check_ticket(services, runId, ticket)
    else:
        identity = request.app.state.tokens.identify(_api_key(request))
        identity.require(Permission.job_run_output)
    if last_event_id is not None:
        at, _, number = last_event_id.partition(".")
        if not at.isdigit() or not (number.isdigit() or "." not in last_event_id):
            raise BadRequest("Last-Event-ID: expected an event id sent by this stream")
        offset = int(at)
    await services.db.get_run(runId)  # 404 now, not inside the stream
    return EventSourceResponse(run_events(services, runId, offset, interval), ping=15)
