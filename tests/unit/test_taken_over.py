"""An executor that looked dead to the others (found by the soak, etcd's majority down): its
heartbeat must not wait for the lock store, and once another executor took one of its runs over
it stops following that run without touching its locks or its flow run."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest

from ascob_flows.engine_compat import forget_dropped, is_dropped, tune_flow_engine
from ascob_flows.executor.host import Executor
from ascob_flows.locks.base import Grant
from ascob_flows.locks.queueing import Pump
from ascob_flows.runtime import Runtime


class Rows:
    """The repository's side: heartbeats counted; the runs another executor owns now."""

    def __init__(self, taken: list[int] | None = None) -> None:
        self.beats = 0
        self.taken = taken or []

    def executor_heartbeat(self, executor_id: str, ttl: float) -> None:
        self.beats += 1

    def taken_over(self, executor_id: str, run_ids: list[int]) -> list[int]:
        return [r for r in run_ids if r in self.taken]


class StuckLocks:
    """A lock store without quorum: every renewal waits (until its timeout, here for ever)."""

    def __init__(self) -> None:
        self.forgotten: list[int] = []

    async def keepalive(self, run_ids: list[int]) -> None:
        await asyncio.Event().wait()

    def forget(self, run_id: int) -> None:
        self.forgotten.append(run_id)


def executor(rows: Rows, locks: StuckLocks) -> Executor:
    runtime = Runtime(repo=rows, backends=None, locks=locks)  # type: ignore[arg-type]
    ex = Executor(runtime, "x0", installation="test", with_launcher=False)
    ex.heartbeat_interval = 0.05
    ex.stats_interval = 3600
    return ex


async def test_the_heartbeat_goes_on_while_the_lock_store_hangs() -> None:
    """Renewing the leases waited for etcd's timeout before each heartbeat, so the executor's
    row ran out and the others took its runs over while it was alive."""
    rows, locks = Rows(), StuckLocks()
    ex = executor(rows, locks)
    ex.gate.active_runs.add(7)
    loops = [asyncio.create_task(ex._heartbeat_loop()), asyncio.create_task(ex._lease_loop())]
    await asyncio.sleep(0.5)
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    assert rows.beats >= 4


async def test_a_run_taken_over_is_dropped_quietly(caplog: pytest.LogCaptureFixture) -> None:
    tune_flow_engine()
    rows, locks = Rows(taken=[7]), StuckLocks()
    ex = executor(rows, locks)
    flow_run_id = uuid4()
    seen: dict[str, Any] = {}

    async def flow() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen["dropped"] = is_dropped(flow_run_id)  # what the engine's crash handler asks
            raise

    task = asyncio.create_task(flow())
    ex.gate.active[flow_run_id] = task
    ex.gate.active_runs.update({7, 8})
    ex.gate._flow_runs[7] = flow_run_id
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await ex.heartbeat()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and seen == {"dropped": True}
    assert ex.gate.active_runs == {8} and locks.forgotten == [7]
    assert "run 7: taken over by another executor" in caplog.text
    forget_dropped(flow_run_id)  # the gate's _execute does it once the flow run's task ended


async def test_the_engine_writes_nothing_for_a_dropped_flow_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect.flow_engine import AsyncFlowRunEngine

    from ascob_flows.engine_compat import drop_quietly

    tune_flow_engine()

    class Client:
        async def set_flow_run_state(self, *_a: Any, **_k: Any) -> None:
            raise AssertionError("a dropped flow run's state was written")

    flow_run_id = uuid4()
    engine = SimpleNamespace(
        flow_run=SimpleNamespace(id=flow_run_id), client=Client(), _raised=None
    )
    drop_quietly(flow_run_id)
    try:
        cancelled = asyncio.CancelledError()
        await AsyncFlowRunEngine.handle_crash(engine, cancelled)  # type: ignore[arg-type]
        assert engine._raised is cancelled
        record = logging.LogRecord(
            "prefect.flow_runs", logging.ERROR, __file__, 1, "Crash detected! ...", None, None
        )
        record.flow_run_id = str(flow_run_id)
        filters = logging.getLogger("prefect.flow_runs").filters
        assert not all(f.filter(record) for f in filters)
    finally:
        forget_dropped(flow_run_id)


async def test_a_grant_for_a_forgotten_wait_is_not_given_back() -> None:
    """The run's wait was cancelled because another executor follows it now: a grant that
    arrives for it belongs to that executor and must not be released on its behalf."""
    given_back: list[int] = []
    rounds = asyncio.Queue[int]()

    async def grant_round(pending: dict[int, tuple[str, ...]]) -> dict[int, Grant]:
        run_id = await rounds.get()
        return {run_id: Grant(run_id, ("k",), {"k": 1})}

    async def give_back(run_id: int) -> None:
        given_back.append(run_id)

    pump = Pump(grant_round, give_back, 0.01, "test-pump")
    try:
        for run_id, forgotten in ((1, True), (2, False)):
            wait = asyncio.create_task(pump.wait_for_grant(run_id, ["k"]))
            await asyncio.sleep(0.05)
            if forgotten:
                pump.forget(run_id)
            wait.cancel()
            await asyncio.gather(wait, return_exceptions=True)
            rounds.put_nowait(run_id)  # the round that began before the wait went away grants
            await asyncio.sleep(0.1)
        assert given_back == [2]
    finally:
        await pump.aclose()


class Orphans:
    """The repository as a reaper saw it: run 58's executor x1 is gone, but by the time the
    reaper reads the run, the live x0 took it over."""

    def __init__(self) -> None:
        self.claims: list[tuple[int, str, str | None]] = []

    def live_executors(self) -> list[str]:
        return ["x0", "x2"]

    def orphaned_runs(self, executor_id: str, alive: list[str], limit: int) -> list[int]:
        return [58]

    def get_record(self, run_id: int) -> Any:
        return SimpleNamespace(id=run_id, flow_run_id=str(uuid4()), executor_id="x0")

    def claim_for_executor(self, run_id: int, executor_id: str, expected: str | None) -> bool:
        self.claims.append((run_id, executor_id, expected))
        return True

    def unsettled_runs(self, executor_id: str, alive: list[str], limit: int) -> list[int]:
        return []


async def test_a_reaper_leaves_a_run_that_a_live_executor_took_over_meanwhile() -> None:
    """Found by the soak: two reapers saw run 58 orphaned; the first (x0) took it over, the
    second (x2) then re-read it, took "its executor x0 is gone" from the new owner's name and
    took it from x0, alive."""
    from ascob_flows.executor.reaper import Reaper

    repo = Orphans()
    runtime = Runtime(repo=repo, backends=None, locks=None)  # type: ignore[arg-type]
    queries = SimpleNamespace(pending=lambda client: asyncio.sleep(0, result=[]))
    gate = SimpleNamespace(active_runs=set(), active={})
    reaper = Reaper(
        runtime,
        "x2",
        gate,  # type: ignore[arg-type]
        queries,  # type: ignore[arg-type]
        executor_ttl=20,
        interval=1,
        on_resumed=lambda: None,
    )
    await reaper.reap(None)  # type: ignore[arg-type]
    assert repo.claims == []


async def test_a_flow_stops_itself_only_while_its_run_goes_on() -> None:
    """A flow of an executor whose run was taken over stops without a word while the run goes
    on; once the run is final it ends normally (its final state is the owner's, and a late
    start of the flow run had written Running over it: found by the soak)."""
    from ascob_flows.flow import _unless_taken_over

    flow_run = SimpleNamespace(id=uuid4())
    status = SimpleNamespace(is_final=False)

    class Records:
        def get_record(self, run_id: int) -> Any:
            return SimpleNamespace(id=run_id, executor_id="x0", status=status)

    runtime = Runtime(repo=Records(), backends=None, locks=None, executor_id="x1")  # type: ignore[arg-type]
    try:
        with pytest.raises(asyncio.CancelledError):
            await _unless_taken_over(runtime, 58, flow_run)
        assert is_dropped(flow_run.id)
    finally:
        forget_dropped(flow_run.id)
    status.is_final = True
    await _unless_taken_over(runtime, 58, flow_run)  # no exception: the flow ends as the run
    assert not is_dropped(flow_run.id)
