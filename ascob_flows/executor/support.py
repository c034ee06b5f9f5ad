"""Small helpers shared by the executor's parts: backoff, supervision, the stats line."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
from sqlalchemy.exc import OperationalError

from ascob_flows.locks import LockStoreUnavailable

log = logging.getLogger("ascob_flows.executor")


def transient(exc: BaseException) -> bool:
    """An error that a retry may cure (Prefect busy or unreachable, the repository's database
    restarting, the lock store without quorum), not worth a traceback."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in (408, 429, 500, 502, 503, 504)
    return isinstance(
        exc,
        httpx.TransportError | OSError | TimeoutError | OperationalError | LockStoreUnavailable,
    )


class RepositoryTrust:
    """Whether the repository's executor rows can be believed. While the repository is down no
    executor can renew its row, so right after it is back every executor looks gone: found by
    the soak, reapers then took over the runs of executors that were alive, and two executors
    followed one run. After a failed heartbeat the rows are believed again only once every live
    executor has had ``ttl`` seconds to renew its own."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self.distrust_until = 0.0

    def failed(self) -> None:
        self.distrust_until = math.inf

    def succeeded(self) -> None:
        if self.distrust_until == math.inf:
            self.distrust_until = self.clock() + self.ttl

    def trusted(self) -> bool:
        return self.clock() >= self.distrust_until


class Backoff:
    """Exponential backoff between attempts against the Prefect server."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap, self.delay = first, cap, 0.0

    async def failed(self) -> None:
        self.delay = min(self.cap, self.delay * 2 or self.first)
        await asyncio.sleep(self.delay)

    def ok(self) -> None:
        self.delay = 0.0


class Stats:
    """Counters for the executor's periodic log line."""

    def __init__(self) -> None:
        self.created = 0  # flow runs created already claimed by this executor's launcher
        self.claims = 0
        self.lost = 0
        self.claim_seconds = 0.0
        self.finished = 0

    def claim(self, seconds: float, won: bool) -> None:
        self.claims += 1
        self.lost += not won
        self.claim_seconds += seconds

    def report(self) -> str:
        mean = self.claim_seconds / self.claims * 1000 if self.claims else 0.0
        text = (
            f"{self.created + self.claims - self.lost} started ({self.created} created claimed, "
            f"{self.claims} claims of {mean:.0f} ms on average, {self.lost} lost to other "
            f"executors), {self.finished} finished"
        )
        self.created, self.claims, self.lost, self.claim_seconds, self.finished = 0, 0, 0, 0.0, 0
        return text


async def supervise(name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Keep a background loop alive: log its crash and start it again."""
    while True:
        try:
            await job()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if transient(exc):
                log.warning("executor loop %s: %r; restarting it", name, exc)
            else:
                log.exception("executor loop %s crashed; restarting it", name)
            await asyncio.sleep(1.0)


async def write_final_state(client: Any, runtime: Any, rec: Any) -> None:
    """Give an ended run's flow run the run's final state, then clear ``flow_unsettled``."""
    from uuid import UUID

    from ascob_flows.ui import final_state

    assert rec.flow_run_id is not None
    await client.set_flow_run_state(
        UUID(rec.flow_run_id), final_state(rec, rec.message), force=True
    )
    await runtime.db.settle_flow(rec.id)
