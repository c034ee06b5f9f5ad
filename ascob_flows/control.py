"""Stopping a run: shared by the REST API (DELETE /api/runs/{id}) and the executor (Cancel
pressed on the flow run in the Prefect UI)."""

from __future__ import annotations

import asyncio
import logging

from ascob_flows.locks import LockStore, LockStoreUnavailable
from ascob_flows.ports import RunRepository
from ascob_flows.status import NOT_DISPATCHED, RunStatus
from backends import BackendRegistry

log = logging.getLogger(__name__)


class AlreadyFinal(Exception):
    """The run has ended already; there is nothing to stop."""

    def __init__(self, run_id: int, status: RunStatus) -> None:
        super().__init__(f"run {run_id} is already {status.value}")
        self.status = status


async def request_stop(
    repo: RunRepository,
    locks: LockStore,
    backends: BackendRegistry,
    run_id: int,
    force: bool,
    reason: str = "stopped",
) -> RunStatus:
    """Not dispatched yet: ABORTED at once (locks released). Dispatched: ABORTING, and the
    backend is asked to stop now; the flow records ABORTED when the backend confirms.
    Returns the status the run has afterwards."""
    rec = await asyncio.to_thread(repo.get_record, run_id)
    if rec.status.is_final:
        raise AlreadyFinal(run_id, rec.status)
    message = f"{reason} before dispatch"
    aborted = False
    if rec.status in NOT_DISPATCHED:
        aborted = await asyncio.to_thread(
            repo.transition, run_id, NOT_DISPATCHED, RunStatus.ABORTED, None, message=message
        )
    if not aborted and rec.status in (*NOT_DISPATCHED, RunStatus.PENDING_SUBMIT):
        aborted = await asyncio.to_thread(
            repo.transition,
            run_id,
            [RunStatus.PENDING_SUBMIT],
            RunStatus.ABORTED,
            {"dispatch_started": False},
            message=message,
        )
    if aborted:
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
    moved = await asyncio.to_thread(
        repo.transition,
        run_id,
        [RunStatus.PENDING_SUBMIT, RunStatus.SUBMITTED, RunStatus.RUNNING],
        RunStatus.ABORTING,
        None,
        abort_force=force,
    )
    if moved:
        log.info("run %s: ABORTING (%s, force=%s)", run_id, reason, force, extra={"runId": run_id})
        await stop_backend_job(repo, backends, run_id)
    return (await asyncio.to_thread(repo.get_record, run_id)).status


async def stop_backend_job(repo: RunRepository, backends: BackendRegistry, run_id: int) -> None:
    """Ask the backend to stop the job once; failures are left to the flow's next poll."""
    rec = await asyncio.to_thread(repo.get_record, run_id)
    if not rec.identification_keys or rec.stop_sent:
        return  # the flow stops it as soon as the submission returns
    backend = backends.get(rec.backend_id)
    if not backend.can_stop:
        return
    try:
        await backend.stop(rec.identification_keys, force=rec.abort_force)
        await asyncio.to_thread(repo.update_fields, run_id, stop_sent=True)
    except Exception as exc:
        log.warning(
            "run %s: stop on %s failed (%r); the flow tries again",
            run_id,
            backend.id,
            exc,
            extra={"runId": run_id},
        )
