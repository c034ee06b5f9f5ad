"""The ``ascob-job`` flow: acquire locks -> dispatch -> poll to completion -> release locks.

Every step reads and writes the run in the repository with conditional updates, so the flow can
be started again on any executor (after a crash) and carries on from where the run is: a run
whose job was dispatched is re-attached through its identification keys, never sent again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import PrefectClient
from prefect.context import FlowRunContext
from prefect.states import State

from ascob_flows.clock import utcnow
from ascob_flows.locks import Grant
from ascob_flows.ports import RunRecord
from ascob_flows.runtime import Runtime, get_runtime
from ascob_flows.status import NOT_DISPATCHED, RunStatus
from ascob_flows.ui import (
    current_view,
    final_state,
    flow_run_name,
    link_markdown,
    open_view,
    output_markdown,
)
from backends import Backend, BackendUnavailable, Job, JobNotFound, SubmitRefused

log = logging.getLogger(__name__)

FLOW_NAME = "ascob-job"
DEPLOYMENT_NAME = "ascob-job"

_ACTIVE = (RunStatus.PENDING_SUBMIT, RunStatus.SUBMITTED, RunStatus.RUNNING, RunStatus.ABORTING)
_NOT_FINAL = (RunStatus.DEFINED, RunStatus.WAITING_LOCKS, *_ACTIVE)
_MAX_BACKOFF = 60.0
_NOT_FOUND_LIMIT = 5  # consecutive "job not found" answers before the run ends FAILED


def mirror_state(status: RunStatus) -> None:
    """Show the ASCOB status as the flow run's state name (a Running state), in time."""
    view = current_view()
    if view is not None:
        view.show_status(status)


def _stopping(status: RunStatus) -> bool:
    return status.is_final or status is RunStatus.ABORTING


# ---------------------------------------------------------------------- acquire


@task(name="acquire-locks", cache_policy=NO_CACHE, persist_result=False)
async def acquire_locks(run_id: int) -> dict[str, int] | None:
    """Wait until the run holds all its locks; None if it was stopped meanwhile."""
    rt = get_runtime()
    logger = get_run_logger()
    rec = await rt.record(run_id)
    if rec.status.is_final:
        return None
    if not rec.lock_keys:
        if rec.status is RunStatus.DEFINED:
            await asyncio.to_thread(
                rt.repo.transition, run_id, [RunStatus.DEFINED], RunStatus.PENDING_SUBMIT
            )
        return {}
    if rec.status not in NOT_DISPATCHED and rec.dispatch_started:
        # resumed after a restart: the job runs already; take our leases back if still ours
        try:
            grant = await asyncio.wait_for(rt.locks.acquire(run_id, rec.lock_keys), 10)
            return grant.tokens
        except TimeoutError:
            logger.error(
                "run %s: its locks %s expired while no executor held them",
                run_id,
                list(rec.lock_keys),
            )
            return {}
    if rec.status is RunStatus.DEFINED:
        await asyncio.to_thread(
            rt.repo.transition, run_id, [RunStatus.DEFINED], RunStatus.WAITING_LOCKS
        )
    mirror_state(RunStatus.WAITING_LOCKS)
    logger.info("run %s: waiting for locks %s", run_id, list(rec.lock_keys))
    waited = await _acquire_unless_stopped(rt, rec)
    if waited is None:
        await rt.locks.release(run_id)
        logger.info("run %s: stopped while waiting for locks", run_id)
        return None
    moved = await asyncio.to_thread(
        rt.repo.transition,
        run_id,
        [RunStatus.WAITING_LOCKS, RunStatus.DEFINED],
        RunStatus.PENDING_SUBMIT,
    )
    if not moved and (await rt.record(run_id)).status is not RunStatus.PENDING_SUBMIT:
        await rt.locks.release(run_id)
        return None
    logger.info(
        "run %s: holds locks %s (fencing token %s)", run_id, waited.tokens, waited.fencing_token
    )
    return waited.tokens


async def _acquire_unless_stopped(rt: Runtime, rec: RunRecord) -> Grant | None:
    acquiring = asyncio.ensure_future(rt.locks.acquire(rec.id, rec.lock_keys))
    try:
        while True:
            status = (await rt.record(rec.id)).status
            if _stopping(status):
                return None
            watcher = asyncio.ensure_future(rt.wait_change(rec.id, status, None))
            done, _ = await asyncio.wait({acquiring, watcher}, return_when=asyncio.FIRST_COMPLETED)
            watcher.cancel()
            if acquiring in done:
                return acquiring.result()
    finally:
        if not acquiring.done():
            acquiring.cancel()


# ---------------------------------------------------------------------- dispatch

_LOCKTOKEN = re.compile(r"%%LOCKTOKEN%%")


def _job_for(rec: RunRecord, tokens: dict[str, int]) -> Job:
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


@task(name="dispatch", cache_policy=NO_CACHE, persist_result=False)
async def dispatch(run_id: int, tokens: dict[str, int]) -> bool:
    """Send the job to its backend once. False if the run must wait for its locks again."""
    rt = get_runtime()
    logger = get_run_logger()
    rec = await rt.record(run_id)
    if rec.status is not RunStatus.PENDING_SUBMIT:
        return True  # dispatched already (resumed) or stopped
    if rec.dispatch_started:
        await _end(
            rt,
            run_id,
            RunStatus.IN_DOUBT,
            "the executor stopped while dispatching: the backend may or may not have "
            "received the job; ASCOB does not send it twice",
        )
        logger.error("run %s: IN_DOUBT (executor died during dispatch)", run_id)
        return True
    if rec.lock_keys and not await rt.locks.holds(run_id, rec.lock_keys):
        logger.warning("run %s: lock lease lost before dispatch; waiting again", run_id)
        await asyncio.to_thread(
            rt.repo.transition, run_id, [RunStatus.PENDING_SUBMIT], RunStatus.WAITING_LOCKS
        )
        return False
    started = await asyncio.to_thread(
        rt.repo.transition,
        run_id,
        [RunStatus.PENDING_SUBMIT],
        RunStatus.PENDING_SUBMIT,
        {"dispatch_started": False},
        dispatch_started=True,
    )
    if not started:
        return True
    backend = rt.backends.get(rec.backend_id)
    try:
        keys = await backend.submit(_job_for(rec, tokens))
    except SubmitRefused as exc:
        logger.error("run %s: %s refused the job: %s", run_id, backend.id, exc)
        await _end(rt, run_id, RunStatus.FAILED, f"{backend.id} refused the job: {exc}")
        return True
    except Exception as exc:
        logger.error("run %s: dispatch outcome unknown: %r", run_id, exc)
        await _end(
            rt,
            run_id,
            RunStatus.IN_DOUBT,
            f"dispatch to {backend.id} failed with an unknown outcome: {exc!r}",
        )
        return True
    await asyncio.to_thread(
        rt.repo.update_fields, run_id, identification_keys=keys, submission_time=utcnow()
    )
    await asyncio.to_thread(
        rt.repo.transition, run_id, [RunStatus.PENDING_SUBMIT], RunStatus.SUBMITTED
    )
    logger.info("run %s: submitted to %s as %s", run_id, backend.id, keys)
    return True


async def _end(rt: Runtime, run_id: int, status: RunStatus, message: str) -> bool:
    return await asyncio.to_thread(rt.repo.transition, run_id, _NOT_FINAL, status, message=message)


# ---------------------------------------------------------------------- poll


@task(name="poll-to-completion", cache_policy=NO_CACHE, persist_result=False)
async def poll_to_completion(run_id: int) -> str:
    """Follow the backend job until the run is final; a webhook may end it sooner."""
    rt = get_runtime()
    logger = get_run_logger()
    backoff = 0.0
    shown: RunStatus | None = None
    linked = False
    not_found = 0
    while True:
        rec = await rt.record(run_id)
        if rec.status.is_final:
            return rec.status.value
        if rec.status not in (RunStatus.SUBMITTED, RunStatus.RUNNING, RunStatus.ABORTING):
            return rec.status.value  # not dispatched (stopped before dispatch)
        if rec.status is not shown:
            mirror_state(rec.status)
            shown = rec.status
        backend = rt.backends.get(rec.backend_id)
        try:
            if rec.status is RunStatus.ABORTING and not rec.stop_sent:
                await _stop(rt, backend, rec)
            report = await backend.status(rec.identification_keys)
        except JobNotFound as exc:
            not_found += 1
            if not_found >= _NOT_FOUND_LIMIT:
                logger.error("run %s: %s no longer knows the job: %s", run_id, backend.id, exc)
                await _end(
                    rt, run_id, RunStatus.FAILED, f"{backend.id} no longer knows the job ({exc})"
                )
                continue
            await rt.wait_change(run_id, rec.status, rt.poll_interval)
            continue
        except Exception as exc:
            backoff = min(_MAX_BACKOFF, max(rt.poll_interval, backoff * 2 or 1.0))
            level = logger.warning if isinstance(exc, BackendUnavailable) else logger.error
            level(
                "run %s: polling %s failed (%r); again in %.0f s", run_id, backend.id, exc, backoff
            )
            await rt.wait_change(run_id, rec.status, backoff)
            continue
        backoff = 0.0
        not_found = 0
        if not linked:
            linked = True
            view = current_view()
            if view is not None:
                view.show_link(link_markdown(rec, report.url, rt.public_url))
        new = RunStatus.from_backend(report.status)
        if new.is_final:
            allowed = [RunStatus.SUBMITTED, RunStatus.RUNNING, RunStatus.ABORTING]
            if await asyncio.to_thread(
                rt.repo.transition, run_id, allowed, new, message=report.message
            ):
                logger.info("run %s: %s", run_id, new.value)
            continue
        if new is RunStatus.RUNNING and rec.status is RunStatus.SUBMITTED:
            await asyncio.to_thread(
                rt.repo.transition, run_id, [RunStatus.SUBMITTED], RunStatus.RUNNING
            )
            logger.info("run %s: RUNNING", run_id)
            continue
        await rt.wait_change(run_id, rec.status, rt.poll_interval)


async def _output_text(rt: Runtime, rec: RunRecord, limit: int = 4000) -> str | None:
    """The end of the job's output, for the flow run's artifact."""
    if not rec.identification_keys:
        return None
    try:
        chunk = await rt.backends.get(rec.backend_id).output(rec.identification_keys, 0)
    except Exception as exc:  # cosmetic
        log.debug("run %s: no output for the artifact: %r", rec.id, exc)
        return None
    return output_markdown(rec, chunk.text[-limit:])


async def _stop(rt: Runtime, backend: Backend, rec: RunRecord) -> None:
    if backend.can_stop:
        await backend.stop(rec.identification_keys, force=rec.abort_force)
    await asyncio.to_thread(rt.repo.update_fields, rec.id, stop_sent=True)


# ---------------------------------------------------------------------- release


@task(name="release-locks", cache_policy=NO_CACHE, persist_result=False)
async def release_locks(run_id: int) -> None:
    """Give back every lock of the run (and its place in any queue)."""
    await get_runtime().locks.release(run_id)


# ---------------------------------------------------------------------- the flow


@flow(
    name=FLOW_NAME,
    persist_result=False,
    description="One ASCOB run: acquire locks, dispatch to the backend, poll, release locks.",
)
async def ascob_job(
    run_id: int | None = None, job_spec: dict[str, Any] | None = None
) -> State[Any]:
    """Run ASCOB run ``run_id``; given a ``job_spec`` instead, record a new run first."""
    rt = get_runtime()
    logger = get_run_logger()
    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx else None
    if run_id is None:
        if job_spec is None:
            raise ValueError("ascob-job needs run_id or job_spec")
        if rt.register_spec is None:
            raise RuntimeError("this executor cannot register runs")
        flow_run_id = str(flow_run.id) if flow_run else ""
        run_id = await asyncio.to_thread(rt.register_spec, job_spec, flow_run_id)
        rt.active_runs.add(run_id)
        if ctx and flow_run and isinstance(ctx.client, PrefectClient):
            rec = await rt.record(run_id)
            await ctx.client.set_flow_run_name(flow_run.id, flow_run_name(run_id, rec.description))
        await asyncio.to_thread(rt.repo.update_fields, run_id, executor_id=rt.executor_id)
        logger.info("run %s: registered from a deployment flow run", run_id)
    view = open_view(ctx.client, flow_run.id, run_id) if ctx and flow_run else None
    completed = False
    try:
        while True:
            rec = await rt.record(run_id)
            if rec.status.is_final:
                break
            tokens = await acquire_locks(run_id)
            if tokens is None:
                break
            if await dispatch(run_id, tokens):
                break
        await poll_to_completion(run_id)
        completed = True
    finally:
        rec = await rt.record(run_id)
        output = None
        if rec.status.is_final:
            await release_locks(run_id)
            output = await _output_text(rt, rec)
        elif completed:
            logger.error("run %s: flow ended with the run still %s", run_id, rec.status.value)
        if view is not None:
            await view.close(output)
    return final_state(rec)
