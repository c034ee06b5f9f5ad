"""Acting on a run from outside its flow, through the state machine (:mod:`ascob_flows.machine`):
stopping it (the REST API's DELETE, Cancel pressed in the Prefect UI) and applying what a backend
or the job itself reports (the flow's poll, a refresh, the webhook)."""

from __future__ import annotations

import logging
from typing import Any

from ascob_flows.errors import AlreadyFinal
from ascob_flows.locks import LockStore, LockStoreUnavailable
from ascob_flows.machine import (
    ABORT_UNDISPATCHED,
    BEGIN_ABORT,
    REPORT_QUEUED,
    Stage,
    backend_report_step,
)
from ascob_flows.ports import AsyncRunRepository, AuditNote
from ascob_flows.status import RunStatus
from backends import BackendRegistry, BackendStatus, StatusReport

__all__ = ["AlreadyFinal", "apply_backend_report", "request_stop", "stop_backend_job"]

log = logging.getLogger(__name__)

PREFECT_UI = "prefect-ui"


async def request_stop(
    db: AsyncRunRepository,
    locks: LockStore,
    backends: BackendRegistry,
    run_id: int,
    force: bool,
    reason: str = "stopped",
    actor: str = PREFECT_UI,
) -> RunStatus:
    """Not dispatched yet: ABORTED at once (locks released). Dispatched (or being dispatched):
    ABORTING, and the backend is asked to stop now; the flow records ABORTED when the backend
    confirms. Returns the status the run has afterwards. ``actor`` is who asked, for the audit:
    the API passes the token's identifier; the executor's canceller (Cancel pressed on the flow
    run in the Prefect UI) leaves the default; the stop is audited in the transaction of its
    first step, whether that step applies or not."""
    rec = await db.get_record(run_id)
    if rec.status.is_final:
        raise AlreadyFinal(run_id, rec.status)
    stop_note = AuditNote(actor, "stop", {"force": force, "status": rec.status.value}, always=True)
    aborted = await db.apply(
        run_id, ABORT_UNDISPATCHED, audit=stop_note, message=f"{reason} before dispatch"
    )
    if aborted is not None:
        try:
            await locks.release(run_id)
        except LockStoreUnavailable:
            # the flow releases them too, and a lease runs out by itself
            log.warning(
                "run %s: lock store unavailable; its locks are released later",
                run_id,
                extra={"runId": run_id},
            )
        log.info("run %s: ABORTED before dispatch (%s)", run_id, reason, extra={"runId": run_id})
        return RunStatus.ABORTED
    moved = await db.apply(run_id, BEGIN_ABORT, abort_force=force)
    if moved is not None:
        log.info("run %s: ABORTING (%s, force=%s)", run_id, reason, force, extra={"runId": run_id})
        await stop_backend_job(db, backends, run_id)
    return (await db.get_record(run_id)).status


async def stop_backend_job(db: AsyncRunRepository, backends: BackendRegistry, run_id: int) -> None:
    """Ask the backend to stop the job once; failures are left to the flow's next poll."""
    rec = await db.get_record(run_id)
    if not rec.identification_keys or rec.stop_sent or rec.stage is Stage.DISPATCHING:
        return  # the flow stops it as soon as the submission returns
    backend = backends.get(rec.backend_id)
    if not backend.can_stop:
        return
    try:
        await backend.stop(rec.identification_keys, force=rec.abort_force)
        await db.mark_stop_sent(run_id)
    except Exception as exc:
        log.warning(
            "run %s: stop on %s failed (%r); the flow tries again",
            run_id,
            backend.id,
            exc,
            extra={"runId": run_id},
        )


async def apply_backend_report(db: AsyncRunRepository, run_id: int, report: StatusReport) -> bool:
    """Record what the backend says of the run's job (the flow's poll and a refresh): the one
    place a backend status becomes a run status. True if the run's status changed."""
    step = backend_report_step(report.status)
    if step is None:  # still queued: only why, if the backend says
        if report.message:
            await db.apply(run_id, REPORT_QUEUED, message=report.message)
        return False
    message = report.message
    if message is None and report.status in (BackendStatus.FAILED, BackendStatus.ABORTED):
        message = f"the backend reports the job {report.status.value}"
    fields: dict[str, Any] = {"message": message} if message else {}
    return await db.apply(run_id, step, **fields) is not None
