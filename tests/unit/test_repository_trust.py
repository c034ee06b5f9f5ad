"""The reaper believes the repository's executor rows only when every executor could renew its
own (ascob_flows.executor.support.RepositoryTrust). Found by the soak: right after PostgreSQL
came back, every executor looked gone, and reapers took over the runs of live executors."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.exc import OperationalError

from ascob_flows.executor.host import Executor
from ascob_flows.executor.reaper import Reaper
from ascob_flows.executor.support import RepositoryTrust
from ascob_flows.runtime import Runtime


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rows_are_believed_again_a_ttl_after_the_repository_is_back() -> None:
    clock = Clock()
    trust = RepositoryTrust(ttl=20, clock=clock)
    assert trust.trusted()
    trust.succeeded()
    assert trust.trusted()  # beats that never failed change nothing
    trust.failed()
    clock.now += 60
    assert not trust.trusted()  # down: nobody can renew a row
    trust.succeeded()
    clock.now += 19
    assert not trust.trusted()  # back, but others may not have renewed theirs yet
    trust.succeeded()  # a second good beat does not move the horizon
    clock.now += 1
    assert trust.trusted()


class Untouchable:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the reaper used {name} while the repository was distrusted")


def test_a_distrusting_reaper_resumes_nothing() -> None:
    trust = RepositoryTrust(ttl=20)
    trust.failed()
    reaper = Reaper(
        Untouchable(),  # type: ignore[arg-type]
        "x1",
        Untouchable(),  # type: ignore[arg-type]
        Untouchable(),  # type: ignore[arg-type]
        executor_ttl=20,
        interval=1,
        on_resumed=lambda: None,
        trust=trust,
    )
    asyncio.run(reaper.reap(Untouchable()))  # type: ignore[arg-type]


class DownRepository:
    def executor_heartbeat(self, executor_id: str, ttl: float) -> None:
        raise OperationalError("UPDATE executors", {}, Exception("connection refused"))


class RecordingLocks:
    def __init__(self) -> None:
        self.renewed: list[list[int]] = []

    async def keepalive(self, run_ids: list[int]) -> None:
        self.renewed.append(run_ids)


def test_lock_leases_are_renewed_while_the_repository_is_down() -> None:
    """Found by the soak: a failed heartbeat skipped the lock leases' renewal, so a PostgreSQL
    outage longer than the lease let other runs take the locks of running jobs."""
    locks = RecordingLocks()
    runtime = Runtime(repo=DownRepository(), backends=None, locks=locks)  # type: ignore[arg-type]
    executor = Executor(runtime, "x1", installation="test", with_launcher=False)
    executor.gate.active_runs.add(7)
    asyncio.run(executor.beat())
    assert locks.renewed == [[7]]
    assert not executor.trust.trusted()
