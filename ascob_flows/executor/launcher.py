"""The launcher: creates the flow run of every recorded run that has none yet.

Idempotency key per run (``launch_key``), retried until Prefect answers: an outage delays runs,
loses none. See :class:`Launcher` for the claimed create of a process that has an executor.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from prefect.states import State

from ascob_flows.executor.queries import installation_tag
from ascob_flows.executor.support import Backoff, log, transient
from ascob_flows.ports import RunRecord
from ascob_flows.runtime import Runtime
from ascob_flows.ui import flow_run_name

if TYPE_CHECKING:
    from ascob_flows.executor.host import Executor

_CREATE_ATTEMPTS = 20


class CreatePacer:
    """Paces the launcher's creates on the Prefect server's answers (AIMD on how many creates
    are in flight): one more allowed per window of answered creates, halved on a refusal (503,
    429) and after a pause (``Retry-After`` when the server gives one, else growing with the
    refusals in a row), cut by a quarter when answers come more than four times as slow as
    the fastest seen lately (and over 250 ms). Never a fixed rate, never a retry at once.

    Why: a SQLite-backed Prefect server creates a flow run in a deferred transaction that reads
    (the deployment, the flow's labels) before it writes; a write committed by anyone in between
    makes SQLite answer ``SQLITE_BUSY_SNAPSHOT`` at once (its busy timeout does not apply), which
    Prefect turns into 503. Fewer creates in flight, fewer such races."""

    def __init__(self, ceiling: int = 4, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = ceiling
        self.clock = clock
        self.window = float(ceiling)  # creates allowed in flight (the floor of it)
        self.in_flight = 0
        self.not_before = 0.0
        self.refusals_in_row = 0
        self.refused = 0  # counters, for the stats line and the tests
        self.answered = 0
        self._fastest = math.inf
        self._fastest_at = 0.0
        self._last_cut = -math.inf
        self._room = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._room:
            while True:
                wait = self.not_before - self.clock()
                if wait <= 0 and self.in_flight < max(1, int(self.window)):
                    self.in_flight += 1
                    return
                try:
                    await asyncio.wait_for(self._room.wait(), max(wait, 0.05) if wait > 0 else None)
                except TimeoutError:
                    pass

    async def release(self) -> None:
        async with self._room:
            self.in_flight -= 1
            self._room.notify_all()

    def answered_in(self, seconds: float) -> None:
        """A create answered (created or found) after ``seconds``."""
        now = self.clock()
        self.answered += 1
        self.refusals_in_row = 0
        if seconds < self._fastest or now - self._fastest_at > 30.0:
            self._fastest, self._fastest_at = seconds, now  # the baseline forgets in 30 s
        if seconds > max(4 * self._fastest, 0.25) and self._cut_allowed(now, seconds):
            self.window = max(1.0, self.window * 0.75)
        else:
            self.window = min(float(self.ceiling), self.window + 1.0 / self.window)

    def refused_now(self, retry_after: float | None) -> float:
        """A create refused (503/429): halve the window, pause; returns the pause."""
        now = self.clock()
        self.refused += 1
        self.refusals_in_row += 1
        if self._cut_allowed(now, 0.0):
            self.window = max(1.0, self.window / 2)
        if retry_after is not None:
            pause = min(max(retry_after, 0.0), 60.0)
        else:
            pause = min(0.05 * 2 ** (self.refusals_in_row - 1), 2.0) * random.uniform(0.75, 1.25)
        self.not_before = max(self.not_before, now + pause)
        return pause

    def _cut_allowed(self, now: float, seconds: float) -> bool:
        # at most one cut per round trip: the creates in flight when the server got busy all
        # answer alike, one signal
        if now - self._last_cut < max(
            self._fastest if self._fastest < math.inf else 0.0, seconds, 0.1
        ):
            return False
        self._last_cut = now
        return True


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of an answer, in seconds (a number; a date is ignored)."""
    value = response.headers.get("retry-after")
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def launch_key(rec: RunRecord) -> str:
    """Idempotency key of a run's flow run: unique per run even across ASCOB installations
    sharing one Prefect server (derived from the run's secret webhook id, which it does not
    reveal)."""
    digest = hashlib.sha256(f"launch:{rec.webhook_id}".encode()).hexdigest()[:20]
    return f"ascob-run-{rec.id}-{digest}"


class Launcher:
    """Creates the missing flow runs of recorded runs; ``kick()`` is thread-safe.

    The launcher of an executor's process (``ascob serve``, ``ascob executor``; it runs in the
    executor's event loop) creates the flow run already claimed for that executor (Pending,
    marked with a nonce) while the executor has room, and hands it over: one write on the
    Prefect server instead of a create, a read and a claim. The launcher of ``ascob api``
    creates Scheduled flow runs, which executors claim."""

    def __init__(
        self, runtime: Runtime, executor: Executor | None = None, *, installation: str
    ) -> None:
        self.runtime = runtime
        self.executor = executor
        self.tag = installation_tag(installation)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick = asyncio.Event()
        self.sweep_interval = 2.0
        self.sweep_grace = 10.0
        self.concurrency = 4  # the most creates in flight; the pacer finds how many fit
        self.pacer = CreatePacer(self.concurrency)
        self.deployment_id: UUID | None = None  # set once the deployment is registered
        self._creating: set[int] = set()  # runs whose create is in flight

    def kick(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._kick.set)

    async def run(self, client: PrefectClient) -> None:
        deployment_id = self.deployment_id
        assert deployment_id is not None, "register the deployment first"
        self._loop = asyncio.get_running_loop()
        # a SQLite-backed Prefect server answers 503 to a create that races another write;
        # Prefect's client would wait 2, 4, 8, 16, 32 s. The pacer waits as long as the server's
        # answers call for, so this task's client calls do not retry by themselves. (Set once
        # for the task: building settings costs milliseconds.)
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
            await self._run(client, deployment_id)

    async def _run(self, client: PrefectClient, deployment_id: UUID) -> None:
        backoff = Backoff()
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), self.sweep_interval)
            except TimeoutError:
                pass
            # kicked: this process recorded runs, create their flow runs now. A periodic sweep
            # (every launcher of the installation does one) takes only runs that waited
            # sweep_grace already, in its own random order: launchers do not all create the
            # same flow runs (idempotent, but each attempt is a write on the Prefect server)
            kicked = self._kick.is_set()
            self._kick.clear()
            while True:
                ids = await self.runtime.db.runs_to_launch(200, 0.0 if kicked else self.sweep_grace)
                # a run whose create is still in flight (refused, waiting for the pacer) is not
                # created a second time beside it
                ids = [i for i in ids if i not in self._creating]
                if not ids:
                    break
                if not kicked:
                    random.shuffle(ids)
                self.pacer.ceiling = self.concurrency
                # every create of the batch ends before the next read: none is left running
                # while the next batch creates the same run again (gather without
                # return_exceptions let them run on, found under 503s: a run's flow run was
                # "created" again after the run had ended)
                results = await asyncio.gather(
                    *(self._create(client, deployment_id, i) for i in ids), return_exceptions=True
                )
                failed = [r for r in results if isinstance(r, BaseException)]
                for exc in failed:
                    if isinstance(exc, asyncio.CancelledError):
                        raise exc
                if not failed:
                    backoff.ok()
                    continue
                log.warning(
                    "creating %d of %d flow runs failed (%r); retrying",
                    len(failed),
                    len(ids),
                    failed[0],
                    exc_info=None if transient(failed[0]) else failed[0],
                )
                await backoff.failed()

    async def _create(self, client: PrefectClient, deployment_id: UUID, run_id: int) -> None:
        self._creating.add(run_id)
        try:
            await self._create_one(client, deployment_id, run_id)
        finally:
            self._creating.discard(run_id)

    async def _create_one(self, client: PrefectClient, deployment_id: UUID, run_id: int) -> None:
        rec = await self.runtime.record(run_id)
        if rec.flow_run_id is not None or rec.status.is_final:
            return  # another launcher (API replica or executor) got there first, or it ended
        executor = self.executor
        claim = await executor.gate.reserve() if executor is not None else None
        try:
            flow_run = await self._create_flow_run(client, deployment_id, rec, claim)
            # Prefect answers an idempotent create with the flow run made before (by an
            # earlier attempt whose answer was lost, or by another launcher), in its own state
            existed = claim is not None and not _claimed_by(flow_run, claim)
            await self.runtime.db.set_flow_run(run_id, str(flow_run.id))
            now = await self.runtime.record(run_id)
            other = now.flow_run_id != str(flow_run.id)
            state = flow_run.state.name if flow_run.state is not None else "no state"
            if existed or other:
                log.info(
                    "run %s: its flow run %s existed already (%s): not created again",
                    run_id,
                    now.flow_run_id if other else flow_run.id,
                    state,
                    extra={"runId": run_id},
                )
            else:
                log.info(
                    "run %s: flow run %s created", run_id, flow_run.id, extra={"runId": run_id}
                )
            if now.status.is_final or other:
                # never start again the flow run of a run that ended meanwhile (found under
                # 503s: a create retried after a refusal answered 5 s after the run SUCCEDED)
                if now.status.is_final:
                    log.info(
                        "run %s: already %s; its flow run is not started again",
                        run_id,
                        now.status.value,
                        extra={"runId": run_id},
                    )
                return
            if executor is not None:
                await executor.claimer.adopt(flow_run, rec, claim)
        finally:
            if executor is not None and claim is not None:
                executor.gate.unreserve()

    async def _create_flow_run(
        self, client: PrefectClient, deployment_id: UUID, rec: RunRecord, state: State[Any] | None
    ) -> FlowRun:
        tags = [self.tag, f"backend:{rec.backend_id}"]
        if rec.submitter:
            tags.append(f"owner:{rec.submitter}")
        pacer = self.pacer
        for attempt in range(_CREATE_ATTEMPTS):
            await pacer.acquire()
            started = time.monotonic()
            try:
                flow_run = await client.create_flow_run_from_deployment(
                    deployment_id,
                    parameters={"run_id": rec.id},
                    name=flow_run_name(rec.id, rec.description),
                    tags=tags,
                    idempotency_key=launch_key(rec),
                    state=state,
                )
                pacer.answered_in(time.monotonic() - started)
                break
            except httpx.HTTPStatusError as exc:
                code = exc.response.status_code
                if code not in (429, 503) or attempt == _CREATE_ATTEMPTS - 1:
                    raise
                pause = pacer.refused_now(retry_after(exc.response))
                log.debug("run %s: create refused (%d); next try in %.2f s", rec.id, code, pause)
            finally:
                await pacer.release()
        if flow_run.deployment_id != deployment_id or flow_run.parameters.get("run_id") != rec.id:
            raise RuntimeError(
                f"run {rec.id}: Prefect returned flow run {flow_run.id} of another deployment "
                "for its idempotency key"
            )
        return flow_run


def _claimed_by(flow_run: FlowRun, claim: State[Any]) -> bool:
    """Whether ``flow_run`` is in the Pending state this create proposed (its nonce)."""
    state = flow_run.state
    return state is not None and state.type == StateType.PENDING and state.message == claim.message
