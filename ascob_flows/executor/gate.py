"""The start gate: every flow run this executor runs goes through it.

It bounds how many flow runs run at once (``max_concurrent``, counting the creates the launcher
has reserved) and how fast they start (``start_rate`` per second), records the claim of a run in
the repository before starting it, and runs the flow run as an asyncio task.

A flow run whose engine fails (the Prefect server was unreachable when it wrote a state: the
engine gives up and leaves the flow run Running) is *settled* once Prefect answers again: it gets
its run's final state if the run ended meanwhile, otherwise it is handed back as Scheduled
("Resuming") and an executor carries on from the repository's state, as after a crash.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.flow_engine import run_flow_async
from prefect.states import Pending, Scheduled, State

from ascob_flows.engine_compat import drop_quietly, forget_dropped, handing_back
from ascob_flows.executor.support import Backoff, Stats, log, transient, write_final_state
from ascob_flows.flow import ascob_job
from ascob_flows.runtime import Runtime
from ascob_flows.ui import final_state

# a run whose flow run keeps failing for a reason other than Prefect is not handed back forever
MAX_HAND_BACKS = 5


class StartGate:
    """Admits, records and runs the flow runs this executor claimed."""

    def __init__(
        self,
        runtime: Runtime,
        executor_id: str,
        *,
        max_concurrent: int,
        start_rate: float,
        on_room: Callable[[], None],
    ) -> None:
        self.runtime = runtime
        self.executor_id = executor_id
        self.max_concurrent = max_concurrent
        self.start_rate = start_rate
        self.on_room = on_room  # called when a full executor has room again
        self.active: dict[UUID, asyncio.Task[Any]] = {}
        self.active_runs = runtime.active_runs
        self.stats = Stats()
        self._reserved = 0  # flow runs the launcher is creating claimed for this executor
        self._next_start = 0.0
        self._settling: set[asyncio.Task[None]] = set()
        self._hand_backs: dict[int, int] = {}
        self._flow_runs: dict[int, UUID] = {}  # run -> the flow run this executor runs it in

    def free(self) -> int:
        """How many more flow runs the claimer may start now."""
        return self.max_concurrent - len(self.active)

    async def pace(self) -> None:
        """Start no more than ``start_rate`` flow runs per second."""
        if self.start_rate <= 0:
            return
        now = time.monotonic()
        wait = self._next_start - now
        self._next_start = max(now, self._next_start) + 1.0 / self.start_rate
        if wait > 0:
            await asyncio.sleep(wait)

    async def reserve(self) -> State[Any] | None:
        """For this process's launcher (same event loop): the Pending state that claims the flow
        run it is about to create, or None when this executor is full. Paced like every start;
        :meth:`unreserve` afterwards, whatever happened."""
        if len(self.active) + self._reserved >= self.max_concurrent:
            return None
        self._reserved += 1
        await self.pace()
        return Pending(message=f"claimed at creation by {self.executor_id} ({uuid.uuid4().hex})")

    def unreserve(self) -> None:
        self._reserved -= 1

    async def start(self, flow_run: FlowRun, run_id: int | None, known: str | None) -> None:
        """Run a flow run this executor claimed in Prefect."""
        if run_id is not None:
            # recorded only if no reaper took the run over meanwhile (it judges a claim that
            # stays unrecorded for an executor's TTL a dead executor's)
            if not await self.runtime.db.claim_for_executor(run_id, self.executor_id, known):
                log.warning("run %s: taken over while being claimed; not starting it", run_id)
                return
            self.active_runs.add(run_id)
            self._flow_runs[run_id] = flow_run.id
        task = asyncio.create_task(self._execute(flow_run, run_id), name=f"flow-run-{flow_run.id}")
        self.active[flow_run.id] = task

    def drop(self, run_ids: Iterable[int]) -> None:
        """Stop following runs that another executor took over (this one looked dead to it: a
        pause, a stall): cancel their flow runs' tasks without a word to Prefect (the new owner
        runs the same flow runs), stop renewing their leases and leave their locks to the new
        owner."""
        for run_id in run_ids:
            self.runtime.locks.forget(run_id)
            self.active_runs.discard(run_id)
            flow_run_id = self._flow_runs.get(run_id)
            task = None if flow_run_id is None else self.active.get(flow_run_id)
            if flow_run_id is None or task is None or task.done():
                continue
            log.warning(
                "run %s: taken over by another executor; this one stops following it",
                run_id,
                extra={"runId": run_id},
            )
            drop_quietly(flow_run_id)  # until the task ends (see _execute)
            task.cancel()

    async def _execute(self, flow_run: Any, run_id: int | None) -> None:
        settle = False
        try:
            state = await run_flow_async(
                ascob_job, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
            )
            if run_id is not None:
                settle = await self._disagrees(flow_run.id, state, int(run_id))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if transient(exc):
                log.warning("flow run %s: the engine lost Prefect (%r)", flow_run.id, exc)
            else:
                log.exception("flow run %s ended with an error", flow_run.id)
            settle = run_id is not None
        finally:
            if settle:
                assert run_id is not None
                task = asyncio.create_task(self._settle(flow_run.id, int(run_id)))
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)
            self.stats.finished += 1
            full = len(self.active) >= self.max_concurrent
            self.active.pop(flow_run.id, None)
            forget_dropped(flow_run.id)
            if run_id is not None:
                self.active_runs.discard(int(run_id))
                if self._flow_runs.get(int(run_id)) == flow_run.id:
                    del self._flow_runs[int(run_id)]
            if full:  # there is room again: look for Scheduled flow runs now
                self.on_room()

    async def _disagrees(self, flow_run_id: UUID, state: Any, run_id: int) -> bool:
        """Whether a flow run that ended must be settled: its run is not final (the flow failed
        half-way, e.g. the lock store without quorum), or its final state is not the run's (a
        release that failed after the job ended; a Cancel in Prefect that came as the job
        ended, which Prefect turns into Cancelled at once while the run ends SUCCEDED)."""
        rec = await self.runtime.record(run_id)
        got = getattr(state, "type", None)
        if rec.status.is_final and got == final_state(rec).type:
            await self.runtime.db.settle_flow(run_id)
            return False
        log.info(
            "run %s: its flow run %s ended %s while the run is %s: settling it",
            run_id,
            flow_run_id,
            getattr(got, "value", got),
            rec.status.value,
        )
        return True

    async def _settle(self, flow_run_id: UUID, run_id: int) -> None:
        """Give a flow run whose engine failed the state its run calls for, retrying until the
        repository and Prefect both answer; nothing if another executor took the run over."""
        backoff = Backoff(first=1.0, cap=30.0)
        while True:
            try:
                rec = await self.runtime.record(run_id)
                if rec.flow_run_id != str(flow_run_id) or rec.executor_id not in (
                    None,
                    self.executor_id,
                ):
                    return  # another executor carries it on: its flow run is its business
                async with get_client() as client:
                    if rec.status.is_final:
                        await write_final_state(client, self.runtime, rec)
                        log.info("run %s: flow run settled as %s", run_id, rec.status.value)
                        return
                    if self._hand_backs.get(run_id, 0) >= MAX_HAND_BACKS:
                        log.error("run %s: its flow run failed %d times; left as it is", run_id,
                                  MAX_HAND_BACKS)  # fmt: skip
                        return
                    self._hand_backs[run_id] = self._hand_backs.get(run_id, 0) + 1
                    await client.set_flow_run_state(
                        flow_run_id, Scheduled(name="Resuming"), force=True
                    )
                log.warning(
                    "run %s: resuming (its flow run failed)", run_id, extra={"runId": run_id}
                )
                self.on_room()  # the claimer looks for Scheduled flow runs now
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not transient(exc):
                    log.warning("run %s: settling its flow run failed", run_id, exc_info=True)
                await backoff.failed()

    async def stop_all(self, limit: float = 10.0) -> None:
        """Hand every live flow run back to Prefect (Scheduled, "Resuming"; see
        ``engine_compat``): the next executor claims it at once and carries on from the
        repository's state; the run keeps its locks meanwhile. Bounded by ``limit`` seconds."""
        for settling in list(self._settling):
            settling.cancel()  # a restarted executor's reaper resumes those runs
        tasks = list(self.active.values())
        if not tasks:
            return
        with handing_back(self.executor_id):
            for task in tasks:
                task.cancel()
            _, late = await asyncio.wait(tasks, timeout=limit)
        log.info(
            "executor %s: handed %d flow runs back%s",
            self.executor_id,
            len(tasks) - len(late),
            f" ({len(late)} did not stop within {limit:.0f} s)" if late else "",
        )
