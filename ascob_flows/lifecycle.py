"""What the ``ascob-job`` flow does, step by step, as plain async functions.

:mod:`ascob_flows.flow` wraps each in a Prefect task (following the job is in
:mod:`ascob_flows.polling`); the fast tests call them directly, with a
repository, a lock store and backends, and no Prefect server. Every status change goes through
:mod:`ascob_flows.machine` (``repo.apply``), so the flow can be started again on any executor
after a crash and carries on from where the run is: a job that was dispatched is re-attached
through its identification keys, never sent again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from ascob_flows.clock import utcnow
from ascob_flows.locks import Grant, LockStoreUnavailable
from ascob_flows.machine import (
    BEGIN_DISPATCH,
    DISPATCH_DEFERRED,
    DISPATCH_REFUSED,
    DISPATCH_UNKNOWN,
    LOCK_WAIT_EXPIRED,
    LOCKS_LOST,
    READY_TO_DISPATCH,
    REATTACH,
    RECORD_SUBMISSION,
    WAIT_FOR_LOCKS,
    Stage,
    Step,
)
from ascob_flows.polling import NOT_FOUND_LIMIT, Logger, Shower, follow, no_view
from ascob_flows.ports import RunRecord
from ascob_flows.retry import BACKEND, DISPATCH, Backoff, retry
from ascob_flows.runtime import Runtime
from ascob_flows.status import RunStatus
from backends import (
    Backend,
    BackendUnavailable,
    Job,
    JobNotFound,
    SpecRejected,
    SubmitRefused,
    SubmitUnknown,
)

__all__ = ["NOT_FOUND_LIMIT", "Logger", "Shower", "acquire", "dispatch", "follow", "job_for"]

log = logging.getLogger(__name__)

REATTACH_TRIES = 4  # backend calls that may fail before a mid-dispatch resume gives up
_DISPATCHED = (Stage.DISPATCHING, Stage.SUBMITTED, Stage.RUNNING, Stage.ABORTING)


async def _apply(rt: Runtime, run_id: int, step: Step, **fields: Any) -> Stage | None:
    return await rt.db.apply(run_id, step, **fields)


# ---------------------------------------------------------------------- locks


async def acquire(
    rt: Runtime, run_id: int, logger: Logger, show: Shower = no_view
) -> dict[str, int] | None:
    """Wait until the run holds all its locks: the fencing tokens, or None if it ended
    meanwhile (stopped, or waited longer than its maxLockWaitSeconds)."""
    rec = await rt.record(run_id)
    if rec.status.is_final:
        return None
    if rec.stage in _DISPATCHED:
        return await _retake(rt, rec, logger)
    if not rec.lock_keys:
        await _apply(rt, run_id, READY_TO_DISPATCH)
        return {}
    if rec.stage is Stage.DEFINED:
        await _apply(rt, run_id, WAIT_FOR_LOCKS, waiting_since=utcnow())
        rec = await rt.record(run_id)
    show(RunStatus.WAITING_LOCKS)
    logger.info("run %s: waiting for locks %s", run_id, list(rec.lock_keys))
    grant = await _acquire_unless_stopped(rt, rec, logger)
    if grant is None:
        await _release_unless_taken_over(rt, run_id, logger)
        return None
    moved = await _apply(rt, run_id, READY_TO_DISPATCH)
    if moved is None and (await rt.record(run_id)).stage is not Stage.PENDING_SUBMIT:
        await _release_unless_taken_over(rt, run_id, logger)
        return None
    logger.info(
        "run %s: holds locks %s (fencing token %s)", run_id, grant.tokens, grant.fencing_token
    )
    return grant.tokens


async def _release_unless_taken_over(rt: Runtime, run_id: int, logger: Logger) -> None:
    """Give the run's locks back, unless another executor took the run over meanwhile: its
    flow holds them now (found by the soak: the flow of an executor that had looked dead
    released the locks of the run whose job the new owner had just started)."""
    rec = await rt.record(run_id)
    if rt.owned_elsewhere(rec):
        logger.warning(
            "run %s: taken over by executor %s; its locks are left to it", run_id, rec.executor_id
        )
        return
    await rt.locks.release(run_id)


async def _retake(rt: Runtime, rec: RunRecord, logger: Logger) -> dict[str, int]:
    """A resumed run whose job runs already takes its locks back if they are still free; it
    never queues (it would block later runs behind a place nobody takes)."""
    if not rec.lock_keys:
        return {}
    try:
        grant = await retry(
            lambda: rt.locks.try_acquire(rec.id, rec.lock_keys),
            on=(LockStoreUnavailable,),
            attempts=REATTACH_TRIES,
            what=f"run {rec.id}: taking its locks back",
        )
    except LockStoreUnavailable:
        grant = None
    if grant is not None:
        return grant.tokens
    try:
        holders = sorted(
            {
                i.holder
                for i in await rt.locks.snapshot()
                if i.key in rec.lock_keys and i.holder not in (None, rec.id)
            }
        )
    except LockStoreUnavailable:
        holders = []
    by = f" by run {', '.join(map(str, holders))}" if holders else ""
    message = (
        f"its locks {', '.join(rec.lock_keys)} were taken{by} while no executor followed this "
        "run; its job goes on without them"
    )
    logger.error("run %s: %s", rec.id, message)
    await rt.db.note(rec.id, message)
    return {}


async def _acquire_unless_stopped(rt: Runtime, rec: RunRecord, logger: Logger) -> Grant | None:
    acquiring = asyncio.ensure_future(rt.locks.acquire(rec.id, rec.lock_keys))
    deadline = _wait_deadline(rec)
    try:
        while True:
            current = await rt.record(rec.id)
            if current.status.is_final or current.status is RunStatus.ABORTING:
                logger.info("run %s: stopped while waiting for locks", rec.id)
                return None
            within = None if deadline is None else max(0.0, deadline - time.time())
            watcher = asyncio.ensure_future(rt.wait_change(rec.id, current.status, within))
            done, _ = await asyncio.wait({acquiring, watcher}, return_when=asyncio.FIRST_COMPLETED)
            watcher.cancel()
            if acquiring in done:
                return acquiring.result()
            if deadline is not None and time.time() >= deadline:
                await _expire_wait(rt, current, logger)
                return None
    finally:
        if not acquiring.done():
            acquiring.cancel()


def _wait_deadline(rec: RunRecord) -> float | None:
    if rec.max_lock_wait is None:
        return None
    since = rec.waiting_since or rec.defined_time or utcnow()
    return since.timestamp() + rec.max_lock_wait


async def _expire_wait(rt: Runtime, rec: RunRecord, logger: Logger) -> None:
    try:
        blockers = await rt.locks.waiting_for(rec.id)
    except LockStoreUnavailable:
        blockers = []
    held = f" held by run {', '.join(map(str, blockers))}" if blockers else ""
    message = f"waited {rec.max_lock_wait} s for locks{held}"
    if await _apply(rt, rec.id, LOCK_WAIT_EXPIRED, message=message) is not None:
        logger.warning("run %s: ABORTED: %s", rec.id, message)


# ---------------------------------------------------------------------- dispatch

_LOCKTOKEN = re.compile(r"%%LOCKTOKEN%%")


def job_for(rec: RunRecord, tokens: dict[str, int]) -> Job:
    fencing = str(max(tokens.values(), default=0))

    def sub(values: Any) -> dict[str, str]:
        return {k: _LOCKTOKEN.sub(fencing, v) for k, v in dict(values).items()}

    return Job(
        run_id=rec.id,
        description=rec.description,
        submitter=rec.submitter,
        labels=sub(rec.labels),
        parameters=sub(rec.parameters),
        webhook_id=rec.webhook_id,
    )


async def dispatch(rt: Runtime, run_id: int, tokens: dict[str, int], logger: Logger) -> bool:
    """Send the job to its backend once; while the backend is unavailable and certainly did not
    take it, again after a pause (for up to ``rt.dispatch_retry`` seconds). False if the run must
    wait for its locks again."""
    rec = await rt.record(run_id)
    if rec.stage is Stage.DISPATCHING:
        await _resume_dispatch(rt, rec, logger)
        return True
    backend = rt.backends.get(rec.backend_id)
    since, attempt = time.monotonic(), 0
    while True:
        if rec.stage is not Stage.PENDING_SUBMIT:
            return True  # dispatched already (resumed) or stopped
        if rec.lock_keys and not await rt.locks.holds(run_id, rec.lock_keys):
            logger.warning("run %s: lock lease lost before dispatch; waiting again", run_id)
            return await _apply(rt, run_id, LOCKS_LOST) is None
        # only while no other executor took the run over (a flow of an executor that had
        # looked dead must not send the job its new owner sends)
        if await _apply(rt, run_id, BEGIN_DISPATCH, owner=rt.executor_id) is None:
            return True  # stopped or taken over meanwhile
        try:
            await _submit(rt, backend, rec, tokens, logger, deferred=attempt > 0)
            return True
        except BackendUnavailable as exc:
            if not await _defer(rt, backend, rec, exc, time.monotonic() - since, attempt, logger):
                return True
        rec, attempt = await rt.record(run_id), attempt + 1


async def _defer(
    rt: Runtime,
    backend: Backend,
    rec: RunRecord,
    exc: BackendUnavailable,
    waited: float,
    attempt: int,
    logger: Logger,
) -> bool:
    """The backend is unavailable and did not take the job: back to PENDING_SUBMIT and wait before
    sending it again (True), or, after ``rt.dispatch_retry`` seconds, refused (False; False too
    when the run was stopped meanwhile)."""
    if waited >= rt.dispatch_retry:
        for_how_long = f" for {waited:.0f} s" if rt.dispatch_retry else ""
        message = f"{backend.id} refused the job: unavailable{for_how_long} ({exc})"
        logger.error("run %s: %s", rec.id, message)
        await _apply(rt, rec.id, DISPATCH_REFUSED, message=message)
        return False
    delay = min(DISPATCH.delay(attempt), rt.dispatch_retry - waited)
    message = f"{backend.id} is unavailable ({exc}); the job is sent again in {delay:.0f} s"
    if await _apply(rt, rec.id, DISPATCH_DEFERRED, message=message) is not Stage.PENDING_SUBMIT:
        return False  # stopped while the backend was being called: ABORTED
    logger.warning("run %s: %s", rec.id, message)
    await rt.wait_change(rec.id, rec.status, delay)  # a stop ends the wait
    return True


async def _submit(
    rt: Runtime,
    backend: Backend,
    rec: RunRecord,
    tokens: dict[str, int],
    logger: Logger,
    *,
    deferred: bool,
) -> None:
    """One call of the backend's submit, its outcome recorded. BackendUnavailable passes up: the
    backend did not take the job and may later."""
    run_id = rec.id
    try:
        keys = await backend.submit(job_for(rec, tokens))
    except BackendUnavailable:
        raise
    except (SubmitRefused, SpecRejected) as exc:  # nothing was started
        logger.error("run %s: %s refused the job: %s", run_id, backend.id, exc)
        await _apply(rt, run_id, DISPATCH_REFUSED, message=f"{backend.id} refused the job: {exc}")
        return
    except SubmitUnknown as exc:
        if await _find_lost_submission(rt, backend, run_id, exc, logger):
            return
        logger.error("run %s: dispatch outcome unknown: %s (the job is not found)", run_id, exc)
        await _apply(
            rt,
            run_id,
            DISPATCH_UNKNOWN,
            message=f"dispatch to {backend.id} failed with an unknown outcome: {exc}; the job "
            f"was not found with {exc.keys}",
        )
        return
    except Exception as exc:
        logger.error("run %s: dispatch outcome unknown: %r", run_id, exc)
        await _apply(
            rt,
            run_id,
            DISPATCH_UNKNOWN,
            message=f"dispatch to {backend.id} failed with an unknown outcome: {exc!r}",
        )
        return
    # a run that waited for its backend says so; otherwise the message is left as it is
    note: dict[str, Any] = (
        {"message": f"sent once {backend.id} was available again"} if deferred else {}
    )
    await rt.db.apply(
        run_id,
        RECORD_SUBMISSION,
        keys=lambda stored: {**stored, **keys},
        submission_time=utcnow(),
        **note,
    )
    logger.info("run %s: submitted to %s as %s", run_id, backend.id, keys)


async def _find_lost_submission(
    rt: Runtime, backend: Backend, run_id: int, lost: SubmitUnknown, logger: Logger
) -> bool:
    """The trigger's answer was lost, but the backend can look for the job: ask it (a job may
    take a moment to show up, so "not found" is asked again too) and, if it is there, record the
    submission with the keys that found it. False: not found, the outcome stays unknown."""
    try:
        await retry(
            lambda: backend.status(lost.keys),
            on=(Exception,),
            attempts=REATTACH_TRIES + 2,
            backoff=Backoff(max(rt.poll_interval, 0.5), BACKEND.cap),
            what=f"run {run_id}: looking for the job whose trigger answer was lost",
        )
    except Exception as exc:
        logger.warning("run %s: %s does not find the job (%r)", run_id, backend.id, exc)
        return False
    message = f"the backend's answer to the submission was lost ({lost}); the job was found"
    await rt.db.apply(
        run_id,
        RECORD_SUBMISSION,
        keys=lambda stored: {**stored, **lost.keys},
        submission_time=utcnow(),
        message=message,
    )
    logger.warning("run %s: %s: re-attached as %s", run_id, message, lost.keys)
    return True


async def _resume_dispatch(rt: Runtime, rec: RunRecord, logger: Logger) -> None:
    """The executor stopped while the backend was being called. With identification keys that
    the job reported meanwhile, the backend is asked whether it has the job: if so, re-attach.
    Otherwise the outcome cannot be known: IN_DOUBT, never sent twice."""
    backend = rt.backends.get(rec.backend_id)
    keys = rec.identification_keys
    if keys:
        try:
            await retry(
                lambda: backend.status(keys),
                on=(Exception,),
                unless=(JobNotFound,),
                attempts=REATTACH_TRIES,
                backoff=Backoff(rt.poll_interval, BACKEND.cap),
                what=f"run {rec.id}: asking {backend.id} about the job",
            )
        except Exception as exc:
            logger.warning("run %s: %s does not confirm the job (%r)", rec.id, backend.id, exc)
        else:
            message = (
                "re-attached after a restart during dispatch, through the identification keys "
                "the job reported"
            )
            if await _apply(rt, rec.id, REATTACH, message=message) is not None:
                logger.info("run %s: %s", rec.id, message)
            return
    message = (
        "the executor stopped while dispatching: the backend may or may not have received the "
        "job; ASCOB does not send it twice"
    )
    if await _apply(rt, rec.id, DISPATCH_UNKNOWN, message=message) is not None:
        logger.error("run %s: IN_DOUBT (%s)", rec.id, message)
