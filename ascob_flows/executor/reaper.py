"""The reaper: hands runs of dead executors (or of this executor's previous life) back to
Prefect as Scheduled, so they are claimed again and carry on from the repository's state.

It also covers the gap between winning a claim in Prefect and recording it in the repository:
a flow run Pending for longer than an executor's TTL whose run has no live executor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.states import Scheduled
from prefect.types._datetime import now as prefect_now

from ascob_flows.executor.gate import StartGate
from ascob_flows.executor.queries import Queries
from ascob_flows.executor.support import (
    RepositoryTrust,
    log,
    transient,
    write_final_state,
)
from ascob_flows.ports import RunRecord
from ascob_flows.runtime import Runtime


class Reaper:
    """Resumes orphaned runs; ``on_resumed`` (the claimer's kick) when it handed some back."""

    def __init__(
        self,
        runtime: Runtime,
        executor_id: str,
        gate: StartGate,
        queries: Queries,
        *,
        executor_ttl: float,
        interval: float,
        on_resumed: Callable[[], None],
        trust: RepositoryTrust | None = None,
    ) -> None:
        self.runtime = runtime
        self.executor_id = executor_id
        self.gate = gate
        self.queries = queries
        self.executor_ttl = executor_ttl
        self.interval = interval
        self.on_resumed = on_resumed
        self.trust = trust or RepositoryTrust(executor_ttl)

    async def run(self, client: PrefectClient) -> None:
        while True:
            try:
                await self.reap(client)
            except Exception as exc:
                log.warning("reaping orphaned runs failed", exc_info=not transient(exc))
            await asyncio.sleep(self.interval)

    async def reap(self, client: PrefectClient) -> None:
        if not self.trust.trusted():
            return  # the repository was down: executors that look gone may be renewing their row
        db = self.runtime.db
        alive = await db.live_executors()
        orphans = await db.orphaned_runs(self.executor_id, alive, 500)
        resumed = 0
        for run_id in orphans:
            if run_id in self.gate.active_runs:
                continue
            rec = await self.runtime.record(run_id)
            if rec.flow_run_id is None:
                continue
            if rec.executor_id in alive and rec.executor_id != self.executor_id:
                continue  # a live executor took it over since the query (found by the soak)
            if rec.executor_id == self.executor_id and await self.queries.is_scheduled(
                client, UUID(rec.flow_run_id)
            ):
                continue  # handed back already: Scheduled, waiting for an executor
            resumed += await self._resume(client, rec, f"its executor {rec.executor_id} is gone")
        resumed += await self._reap_stuck_claims(client, alive)
        if resumed:
            self.on_resumed()
        await self._settle_ended(client, alive)

    async def _settle_ended(self, client: PrefectClient, alive: list[str]) -> None:
        """Runs that ended while their executor stopped before writing their flow run's final
        state (it was killed in between): write it now, so Prefect shows how they ended."""
        for run_id in await self.runtime.db.unsettled_runs(self.executor_id, alive, 200):
            if run_id in self.gate.active_runs:
                continue
            rec = await self.runtime.record(run_id)
            await write_final_state(client, self.runtime, rec)
            log.info(
                "run %s: its flow run settled as %s (its executor %s stopped before)",
                run_id,
                rec.status.value,
                rec.executor_id,
                extra={"runId": run_id},
            )

    async def _resume(self, client: PrefectClient, rec: RunRecord, why: str) -> bool:
        """Take the run over in the repository (one reaper wins) and hand its flow run back
        to Prefect as Scheduled: the next claim carries on from the repository's state."""
        assert rec.flow_run_id is not None
        if not await self.runtime.db.claim_for_executor(rec.id, self.executor_id, rec.executor_id):
            return False
        log.warning("run %s: resuming (%s)", rec.id, why, extra={"runId": rec.id})
        await client.set_flow_run_state(
            UUID(rec.flow_run_id), Scheduled(name="Resuming"), force=True
        )
        return True

    async def _reap_stuck_claims(self, client: PrefectClient, alive: list[str]) -> int:
        """A flow run claimed (Pending) by an executor that died before it recorded the claim
        in the repository: Pending for longer than an executor's TTL, no live executor."""
        pending = await self.queries.pending(client)
        horizon = prefect_now("UTC") - timedelta(seconds=self.executor_ttl)
        resumed = 0
        for flow_run in pending:
            run_id = flow_run.parameters.get("run_id")
            if flow_run.id in self.gate.active or run_id is None or flow_run.state is None:
                continue
            if flow_run.state.timestamp > horizon or int(run_id) in self.gate.active_runs:
                continue
            rec = await self.runtime.record(int(run_id))
            if rec.status.is_final or rec.flow_run_id != str(flow_run.id):
                continue
            if rec.executor_id is not None and rec.executor_id in alive:
                continue
            resumed += await self._resume(client, rec, "its claim was never recorded")
        return resumed
