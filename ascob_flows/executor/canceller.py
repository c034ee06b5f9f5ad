"""The canceller: Cancel pressed in the Prefect UI stops the ASCOB run, like
``DELETE /api/runs/{id}`` (the shared logic is ``ascob_flows/control.py``)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.types._datetime import now as prefect_now

from ascob_flows.control import AlreadyFinal, request_stop
from ascob_flows.executor.queries import Queries
from ascob_flows.executor.support import log, transient
from ascob_flows.runtime import Runtime
from ascob_flows.status import RunStatus


class Canceller:
    """Reads Cancelling flow runs every ``interval`` seconds, and Cancelled ones that ended since
    its last look (``margin`` for clocks; the latest 100 at start), not all of them each time."""

    def __init__(self, runtime: Runtime, queries: Queries, interval: float = 2.0) -> None:
        self.runtime = runtime
        self.queries = queries
        self.interval = interval
        self.margin = timedelta(minutes=5)
        self._since: Any = None  # a Prefect datetime once the first look is done

    async def run(self, client: PrefectClient) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.honour_cancellations(client)
            except Exception as exc:
                log.warning("reading cancelled flow runs failed", exc_info=not transient(exc))

    async def honour_cancellations(self, client: PrefectClient) -> None:
        rt = self.runtime
        wanted: list[int] = []
        # every ABORTED run's flow run ends Cancelled, and reading them all again every few
        # seconds would load the Prefect server for nothing
        next_since = prefect_now("UTC") - self.margin
        cancelling = await self.queries.cancelling(client)
        cancelled = await self.queries.cancelled_since(client, self._since)
        for flow_run in [*cancelling, *cancelled]:
            # never another installation's run with the same number (shared deployment name)
            run_id = await self.queries.owns(flow_run)
            if run_id is not None:
                wanted.append(run_id)
        self._since = next_since
        if not wanted:
            return
        statuses = await rt.db.statuses(wanted)
        for run_id, status in statuses.items():
            if status.is_final or status is RunStatus.ABORTING:
                continue
            try:
                await request_stop(
                    rt.db, rt.locks, rt.backends, run_id, force=False, reason="cancelled in Prefect"
                )
            except AlreadyFinal:
                continue
            rt.notify(run_id)
