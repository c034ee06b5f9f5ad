"""The claimer: takes Scheduled flow runs of the deployment and starts them through the gate.

It proposes Pending to the Prefect server, which accepts that for one proposer only, so two
executors never run the same flow run. It claims the flow runs this process's launcher hands
over (created Scheduled because the executor was full), and every ``claim_interval`` (or when
kicked) reads the deployment's Scheduled flow runs: created by other processes, by
``run_deployment``, or handed back by a reaper.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.server.schemas.responses import SetStateStatus
from prefect.states import Pending, State

from ascob_flows.executor.gate import StartGate
from ascob_flows.executor.queries import Queries
from ascob_flows.executor.support import Backoff, log
from ascob_flows.ports import RunRecord
from ascob_flows.runtime import Runtime
from ascob_flows.ui import final_state


class Claimer:
    """Claims Scheduled flow runs; ``kick()`` is thread-safe."""

    def __init__(self, runtime: Runtime, gate: StartGate, claim_interval: float = 1.0) -> None:
        self.runtime = runtime
        self.gate = gate
        self.claim_interval = claim_interval
        self.claim_concurrency = 4
        self.queries: Queries | None = None  # set by the executor once its deployment exists
        self._fresh: dict[UUID, FlowRun] = {}  # created by this process's launcher
        self._claiming: set[UUID] = set()
        self._read_due = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick_event = asyncio.Event()

    def kick(self) -> None:
        """Read the deployment's Scheduled flow runs now, to claim them (thread-safe)."""
        self._read_due = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._kick_event.set)

    async def adopt(self, flow_run: FlowRun, rec: RunRecord, claim: State[Any] | None) -> None:
        """A flow run this process's launcher just created: run it if the create claimed it
        (Prefect answers an idempotent create with the flow run another launcher made, in its
        own state: the nonce tells), else claim it without reading it back."""
        state = flow_run.state
        if state is None:
            return
        if claim is not None and state.type == StateType.PENDING and state.message == claim.message:
            self.gate.stats.created += 1
            await self.gate.start(flow_run, rec.id, rec.executor_id)
        elif state.type == StateType.SCHEDULED:
            self._fresh[flow_run.id] = flow_run
            self._kick_event.set()

    async def run(self, client: PrefectClient) -> None:
        assert self.queries is not None
        self._loop = asyncio.get_running_loop()
        gate = self.gate
        backoff = Backoff()
        last_read = float("-inf")
        while True:
            try:
                await asyncio.wait_for(self._kick_event.wait(), self.claim_interval)
            except TimeoutError:
                pass
            self._kick_event.clear()
            while gate.free() > 0:
                room = min(100, gate.free())
                if self._fresh:
                    batch = [self._fresh.pop(i) for i in list(self._fresh)[:room]]
                    await self._claim_batch(client, batch, checked=True)
                    continue
                if not self._read_due and time.monotonic() - last_read < self.claim_interval:
                    break
                self._read_due, last_read = False, time.monotonic()
                try:
                    batch = await self.queries.scheduled_due(client, room)
                    backoff.ok()
                except Exception as exc:
                    log.warning("reading scheduled flow runs failed (%r)", exc)
                    await backoff.failed()
                    break
                await self._claim_batch(
                    client, [f for f in batch if f.id not in self._claiming], checked=False
                )
                self._read_due = len(batch) == room  # more may wait

    async def _claim_batch(
        self, client: PrefectClient, batch: list[FlowRun], checked: bool
    ) -> None:
        # a claim is one or two round trips to Prefect: a few in flight at once, started no
        # faster than start_rate per second. Other executors read the same batch: in random
        # order, they rarely race each other for the same flow run
        random.shuffle(batch)
        gate = asyncio.Semaphore(self.claim_concurrency)
        claims: list[asyncio.Task[None]] = []
        for flow_run in batch:
            await gate.acquire()
            await self.gate.pace()
            self._claiming.add(flow_run.id)
            claims.append(asyncio.create_task(self._gated_claim(client, flow_run, checked, gate)))
        await asyncio.gather(*claims)

    async def _gated_claim(
        self, client: PrefectClient, flow_run: FlowRun, checked: bool, gate: asyncio.Semaphore
    ) -> None:
        try:
            await self._claim_and_start(client, flow_run, checked)
        except Exception:
            log.exception("starting flow run %s failed", flow_run.id)
        finally:
            self._claiming.discard(flow_run.id)
            gate.release()

    async def _claim_and_start(
        self, client: PrefectClient, flow_run: FlowRun, checked: bool
    ) -> None:
        """Propose Pending; run the flow run if Prefect accepts. ``checked``: its Scheduled state
        was read a moment ago (the launcher's create), no need to read it again."""
        if flow_run.id in self.gate.active:
            return
        started = time.monotonic()
        try:
            # a batch read may be seconds old: Prefect accepts Pending from Completed and Failed
            # (a rerun), so a flow run that another executor claimed *and finished* meanwhile
            # would be run a second time. Propose only while it is still Scheduled (and should
            # the race be lost anyway, _already_over gives the flow run its final state back).
            if not checked:
                current = await client.read_flow_run(flow_run.id)
                if current.state is None or current.state.type != StateType.SCHEDULED:
                    return
                if not await self._ours(current):
                    return  # another installation's flow run (same deployment name)
            run_id = flow_run.parameters.get("run_id")
            known = None if run_id is None else (await self.runtime.record(int(run_id))).executor_id
            result: Any = await client.set_flow_run_state(flow_run.id, Pending(), force=False)
            won = result.status == SetStateStatus.ACCEPT
            self.gate.stats.claim(time.monotonic() - started, won)
        except ObjectNotFound:
            return
        except Exception as exc:
            log.warning("claiming flow run %s failed (%r)", flow_run.id, exc)
            return
        if result.status != SetStateStatus.ACCEPT:
            return  # another executor has it
        if run_id is not None and await self._already_over(client, flow_run.id, int(run_id)):
            return
        flow_run.state = result.state
        await self.gate.start(flow_run, None if run_id is None else int(run_id), known)

    async def _ours(self, flow_run: FlowRun) -> bool:
        assert self.queries is not None
        if self.queries.claimable(flow_run):
            return True
        return await self.queries.owns(flow_run) is not None

    async def _already_over(self, client: PrefectClient, flow_run_id: UUID, run_id: int) -> bool:
        """A claim can still win the race against another executor that ran the flow run to its
        end between our read and our proposal (Prefect takes Pending from Completed as a rerun).
        If the ASCOB run is final there is nothing to run: give the flow run its final state
        back, make sure the locks are free, and leave the run to its owner."""
        rec = await self.runtime.record(run_id)
        if not rec.status.is_final:
            return False
        log.info(
            "run %s: already %s; not running its flow run again",
            run_id,
            rec.status.value,
            extra={"runId": run_id},
        )
        try:
            await self.runtime.locks.release(run_id)
            await client.set_flow_run_state(flow_run_id, final_state(rec), force=True)
        except Exception as exc:
            log.warning(
                "run %s: restoring the final state failed (%r)",
                run_id,
                exc,
                extra={"runId": run_id},
            )
        return True
