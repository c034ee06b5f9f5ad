"""What a running flow needs, handed over by the executor that runs it in-process.

The flow runs inside an executor's event loop; it finds the repository, the backends and the lock
store here rather than in globals of other packages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ascob_flows.locks import LockStore
from ascob_flows.ports import AsyncRunRepository, RunRecord, RunRepository
from ascob_flows.status import RunStatus
from backends import BackendRegistry

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    repo: RunRepository
    backends: BackendRegistry
    locks: LockStore
    poll_interval: float = 5.0
    dispatch_retry: float = 120.0  # seconds a job is sent again while its backend is unavailable
    register_spec: Callable[[dict[str, Any], str], int] | None = None
    watch_interval: float = 1.0
    executor_id: str | None = None
    public_url: str | None = None
    active_runs: set[int] = field(default_factory=set)
    _watched: dict[int, tuple[RunStatus, asyncio.Event]] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _db: AsyncRunRepository | None = None

    @property
    def db(self) -> AsyncRunRepository:
        """The repository for async code: each call in a worker thread."""
        if self._db is None or self._db.sync is not self.repo:
            self._db = AsyncRunRepository(self.repo)
        return self._db

    async def record(self, run_id: int) -> RunRecord:
        return await self.db.get_record(run_id)

    def owned_elsewhere(self, rec: RunRecord) -> bool:
        """Whether another executor took the run over (this one had looked dead to it)."""
        return self.executor_id is not None and rec.executor_id not in (None, self.executor_id)

    # ------------------------------------------------------------------ status changes

    async def wait_change(self, run_id: int, seen: RunStatus, within: float | None) -> None:
        """Return when the run's status differs from ``seen``, or after ``within`` seconds."""
        event = asyncio.Event()
        self._watched[run_id] = (seen, event)
        try:
            if within is None:
                await event.wait()
            else:
                try:
                    await asyncio.wait_for(event.wait(), within)
                except TimeoutError:
                    pass
        finally:
            current = self._watched.get(run_id)
            if current is not None and current[1] is event:
                del self._watched[run_id]

    def notify(self, run_id: int) -> None:
        """Wake the run's flow now (thread-safe): its status changed outside the flow."""
        loop = self._loop
        entry = self._watched.get(run_id)
        if loop is None or entry is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(entry[1].set)

    async def watch_statuses(self) -> None:
        """One query a second for every waiting flow: wakes those whose run changed elsewhere."""
        self._loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.watch_interval)
            if not self._watched:
                continue
            try:
                current = await self.db.statuses(list(self._watched))
            except Exception:
                log.warning("status watch failed", exc_info=True)
                continue
            for run_id, status in current.items():
                entry = self._watched.get(run_id)
                if entry is not None and entry[0] != status:
                    entry[1].set()


_current: Runtime | None = None


def install_runtime(runtime: Runtime) -> None:
    global _current
    _current = runtime


def get_runtime() -> Runtime:
    if _current is None:
        raise RuntimeError(
            "the ascob-job flow runs inside an ASCOB executor (`ascob serve` or `ascob executor`)"
        )
    return _current
