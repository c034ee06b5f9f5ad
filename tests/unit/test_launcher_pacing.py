"""The launcher under a Prefect server that refuses creates (503, as a SQLite-backed server does
when a create races another write): it paces itself on the answers, and a retried create never
makes a second flow run nor starts again the flow run of a run that has ended (issue 20: a run's
"flow run ... created" line was logged a second time 5 s after the run had SUCCEDED)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from prefect.client.schemas.objects import FlowRun, State, StateType

from ascob_flows.executor.launcher import Launcher, launch_key
from ascob_flows.ports import RunRecord
from ascob_flows.runtime import Runtime
from ascob_flows.status import RunStatus

DEPLOYMENT = uuid4()


def record(run_id: int) -> RunRecord:
    return RunRecord(
        id=run_id,
        status=RunStatus.DEFINED,
        description=None,
        submitter=None,
        backend_id="dummyBackend",
        labels={},
        parameters={},
        lock_keys=(),
        webhook_id=f"hook-{run_id}",
    )


class Rows:
    """The repository's side of the launcher."""

    def __init__(self, *run_ids: int) -> None:
        self.recs = {i: record(i) for i in run_ids}

    def get_record(self, run_id: int) -> RunRecord:
        return self.recs[run_id]

    def runs_to_launch(self, limit: int, older_than: float = 0.0) -> list[int]:
        return [i for i, r in self.recs.items() if r.flow_run_id is None and not r.status.is_final][
            :limit
        ]

    def set_flow_run(self, run_id: int, flow_run_id: str) -> None:
        if self.recs[run_id].flow_run_id is None:
            self.recs[run_id] = replace(self.recs[run_id], flow_run_id=flow_run_id)


class Server:
    """Prefect's create with an idempotency key: the flow run made before, in its own state.
    ``refusals[run]`` answers 503 that many times first (each after ``slow`` seconds);
    ``fail_once`` answers 500 once."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows
        self.flow_runs: dict[str, FlowRun] = {}
        self.inserts: list[int] = []
        self.attempts: list[int] = []
        self.refusals: dict[int, int] = {}
        self.fail_once: set[int] = set()
        self.slow = 0.0
        self.retry_after: str | None = None
        self.before_answer: Any = None  # called with the run id before a create succeeds

    async def create_flow_run_from_deployment(
        self, deployment_id: UUID, *, parameters: dict[str, Any], idempotency_key: str,
        state: Any, **_: Any
    ) -> FlowRun:  # fmt: skip
        run_id = int(parameters["run_id"])
        self.attempts.append(run_id)
        await asyncio.sleep(self.slow)
        request = httpx.Request("POST", "http://127.0.0.1/api/deployments/x/create_flow_run")
        if run_id in self.fail_once:
            self.fail_once.discard(run_id)
            answer = httpx.Response(500, request=request)
            raise httpx.HTTPStatusError("500", request=request, response=answer)
        if self.refusals.get(run_id, 0) > 0:
            self.refusals[run_id] -= 1
            headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            answer = httpx.Response(503, request=request, headers=headers)
            raise httpx.HTTPStatusError("503", request=request, response=answer)
        if self.before_answer is not None:
            self.before_answer(run_id)
        if idempotency_key not in self.flow_runs:
            self.inserts.append(run_id)
            self.flow_runs[idempotency_key] = self.make(run_id, state)
        return self.flow_runs[idempotency_key].model_copy(deep=True)

    def make(self, run_id: int, state: Any) -> FlowRun:
        return FlowRun(
            id=uuid4(),
            flow_id=uuid4(),
            deployment_id=DEPLOYMENT,
            parameters={"run_id": run_id},
            state=state or State(type=StateType.SCHEDULED, name="Scheduled"),
        )


class Gate:
    def __init__(self) -> None:
        self.reserved = 0

    async def reserve(self) -> Any:
        self.reserved += 1
        return State(type=StateType.PENDING, name="Pending", message=f"claimed ({uuid4().hex})")

    def unreserve(self) -> None:
        self.reserved -= 1


class Claimer:
    """Starts what the create claimed; the run then ends SUCCEDED (a dummy job)."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows
        self.started: list[int] = []

    async def adopt(self, flow_run: FlowRun, rec: RunRecord, claim: Any) -> None:
        state = flow_run.state
        if state is not None and state.type == StateType.PENDING and state.message == claim.message:
            self.started.append(rec.id)
            self.rows.recs[rec.id] = replace(self.rows.recs[rec.id], status=RunStatus.SUCCEDED)


def launcher(rows: Rows) -> tuple[Launcher, Claimer]:
    runtime = Runtime(repo=rows, backends=None, locks=None)  # type: ignore[arg-type]
    claimer = Claimer(rows)
    executor = SimpleNamespace(gate=Gate(), claimer=claimer)
    made = Launcher(runtime, executor, installation="test")  # type: ignore[arg-type]
    made.deployment_id = DEPLOYMENT
    made.sweep_interval = 0.05
    return made, claimer


async def run_until(
    made: Launcher, server: Server, done: Any, limit: float = 10.0, linger: float = 1.5
) -> None:
    """Run the launcher until ``done()``, and ``linger`` seconds more (a second create of the
    same run would answer meanwhile)."""
    task = asyncio.create_task(made.run(server))  # type: ignore[arg-type]
    made.kick()
    try:
        async with asyncio.timeout(limit):
            while not done():
                await asyncio.sleep(0.02)
                made.kick()
        await asyncio.sleep(linger)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def created_lines(caplog: pytest.LogCaptureFixture, run_id: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(f"run {run_id}: flow run ") and "created" in r.getMessage()
    ]


async def test_a_create_refused_while_another_fails_is_not_made_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Run 1's create is refused a few times; run 2's fails once (500). The launcher retried
    the batch while run 1's create was still in flight: the two creates of run 1 both got its
    flow run, and the later one logged "created" again after the run had SUCCEDED."""
    caplog.set_level(logging.INFO, logger="ascob_flows.executor")
    rows = Rows(1, 2)
    server = Server(rows)
    server.refusals[1] = 4
    server.fail_once.add(2)
    server.slow = 0.2  # run 1 is still being refused when the batch is retried
    made, claimer = launcher(rows)
    await run_until(made, server, lambda: all(r.status.is_final for r in rows.recs.values()))
    assert server.inserts.count(1) == 1 and server.inserts.count(2) == 1
    assert claimer.started == [1, 2] or claimer.started == [2, 1]
    assert len(created_lines(caplog, 1)) == 1, created_lines(caplog, 1)
    assert made.refused >= 4


async def test_a_retried_create_of_an_ended_run_starts_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The create's answer is refused until another launcher made the flow run and the run
    ended: the retried create returns that flow run, Completed. No second flow run, nothing
    started, and the log says what happened."""
    caplog.set_level(logging.INFO, logger="ascob_flows.executor")
    rows = Rows(1)
    server = Server(rows)
    server.refusals[1] = 2
    made, claimer = launcher(rows)
    other = server.make(1, State(type=StateType.COMPLETED, name="Completed"))

    def elsewhere(run_id: int) -> None:  # another launcher's create, and the run ran to its end
        key = launch_key(rows.recs[run_id])
        if key not in server.flow_runs:
            server.flow_runs[key] = other
            server.inserts.append(run_id)
            rows.recs[run_id] = replace(
                rows.recs[run_id], flow_run_id=str(other.id), status=RunStatus.SUCCEDED
            )

    server.before_answer = elsewhere
    await run_until(
        made, server, lambda: rows.recs[1].status.is_final and len(server.attempts) >= 3
    )
    assert server.inserts == [1]
    assert claimer.started == []
    messages = [r.getMessage() for r in caplog.records]
    assert (
        f"run 1: its flow run {other.id} existed already (Completed): not created again" in messages
    )
    assert "run 1: already SUCCEDED; its flow run is not started again" in messages
    assert created_lines(caplog, 1) == []
