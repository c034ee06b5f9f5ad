"""The ``ascob-job`` flow: acquire locks -> dispatch -> poll to completion -> release locks.

Each task is a thin Prefect wrapper around :mod:`ascob_flows.lifecycle`, where every status
change goes through the state machine (:mod:`ascob_flows.machine`), so the flow can be started
again on any executor (after a crash) and carries on from where the run is: a run whose job was
dispatched is re-attached through its identification keys, never sent again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import PrefectClient
from prefect.context import FlowRunContext
from prefect.states import State

from ascob_flows import lifecycle
from ascob_flows.engine_compat import drop_quietly, is_dropped
from ascob_flows.locks import LockStoreUnavailable
from ascob_flows.ports import RunRecord
from ascob_flows.runtime import Runtime, get_runtime
from ascob_flows.status import RunStatus
from ascob_flows.ui import (
    RunView,
    current_view,
    final_state,
    flow_run_name,
    link_markdown,
    open_view,
    output_markdown,
)
from backends import StatusReport

log = logging.getLogger(__name__)

FLOW_NAME = "ascob-job"
DEPLOYMENT_NAME = "ascob-job"


def mirror_state(status: RunStatus) -> None:
    """Show the ASCOB status as the flow run's state name (a Running state), in time."""
    view = current_view()
    if view is not None:
        view.show_status(status)


@task(name="acquire-locks", cache_policy=NO_CACHE, persist_result=False)
async def acquire_locks(run_id: int) -> dict[str, int] | None:
    """Wait until the run holds all its locks; None if it ended meanwhile."""
    return await lifecycle.acquire(get_runtime(), run_id, get_run_logger(), mirror_state)


@task(name="dispatch", cache_policy=NO_CACHE, persist_result=False)
async def dispatch(run_id: int, tokens: dict[str, int]) -> bool:
    """Send the job to its backend once. False if the run must wait for its locks again."""
    return await lifecycle.dispatch(get_runtime(), run_id, tokens, get_run_logger())


@task(name="poll-to-completion", cache_policy=NO_CACHE, persist_result=False)
async def poll_to_completion(run_id: int) -> str:
    """Follow the backend job until the run is final; a webhook may end it sooner."""
    rt = get_runtime()

    def linked(rec: RunRecord, report: StatusReport) -> None:
        view = current_view()
        if view is not None:
            view.show_link(link_markdown(rec, report.url, rt.public_url))

    status = await lifecycle.follow(rt, run_id, get_run_logger(), mirror_state, linked)
    return status.value


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


@task(name="release-locks", cache_policy=NO_CACHE, persist_result=False)
async def release_locks(run_id: int) -> None:
    """Give back every lock of the run (and its place in any queue)."""
    await get_runtime().locks.release(run_id)


# ---------------------------------------------------------------------- the flow


async def _unless_taken_over(rt: Runtime, run_id: int, flow_run: Any) -> None:
    """A flow whose run another executor took over (this one had looked dead) ends here, as
    if dropped by its executor: no state written, no lock released, no view closed - the new
    owner runs the same flow run."""
    rec = await rt.record(run_id)
    if flow_run is None or not rt.owned_elsewhere(rec):
        return
    if rec.status.is_final:
        return  # nothing left to do but end the flow run as the run ended: harmless, and it
        # repairs the state a late start of this flow run wrote over the owner's final one
    log.warning("run %s: taken over by executor %s; this flow stops", run_id, rec.executor_id)
    drop_quietly(flow_run.id)
    raise asyncio.CancelledError()


async def _wind_up(
    rt: Runtime, rec: RunRecord, completed: bool, view: RunView | None, logger: lifecycle.Logger
) -> None:
    """The end of a flow run: an ended run's locks given back, its output in the view."""
    output = None
    if rec.status.is_final:
        try:
            await release_locks(rec.id)
        except LockStoreUnavailable as exc:
            # the job is over: the locks free themselves when their lease ends, since no
            # executor renews the leases of an ended run
            logger.warning(
                "run %s: releasing its locks failed (%s); they expire with their lease",
                rec.id,
                exc,
            )
        output = await _output_text(rt, rec)
    elif completed:
        logger.error("run %s: flow ended with the run still %s", rec.id, rec.status.value)
    if view is not None:
        await view.close(output)


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
        await rt.db.record_executor(run_id, rt.executor_id)
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
        await _unless_taken_over(rt, run_id, flow_run)
        await poll_to_completion(run_id)
        await _unless_taken_over(rt, run_id, flow_run)
        completed = True
    finally:
        rec = await rt.record(run_id)
        # a flow run dropped because another executor took its run over leaves everything
        # (locks, states, the view) to the new owner, which runs the same flow run
        if flow_run is None or not is_dropped(flow_run.id):
            await _wind_up(rt, rec, completed, view, logger)
    return final_state(rec, rec.message)
