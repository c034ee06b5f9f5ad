"""The executor: runs flow runs of the ``ascob-job`` deployment in-process, as asyncio tasks.

Prefect's default runner starts a subprocess per flow run (seconds of CPU and 100+ MB each);
ASCOB's runs spend hours waiting on backends, so one executor holds them all in one event loop:

- the **launcher** creates the flow run of every recorded run that has none yet (idempotency
  key ``ascob-run-<id>``, retried until Prefect answers: an outage delays runs, loses none);
- the **claimer** picks up Scheduled flow runs of the deployment and proposes Pending to the
  Prefect server; Prefect accepts that for one proposer only, so two executors never run the
  same flow run. Starts are throttled (``start_rate`` per second, ``max_concurrent`` at once);
- the **heartbeat** renews this executor's liveness row and the leases of its runs' locks;
- the **reaper** hands runs of dead executors (or of this executor's previous life) back to
  Prefect as Scheduled, so they are claimed again and carry on from the repository's state.

The executor runs in its own thread with its own event loop, so the API never waits on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
from prefect import Flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterNextScheduledStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import AsyncClientContext
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow_async
from prefect.server.schemas.responses import SetStateStatus
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from prefect.states import Pending, Scheduled, State
from prefect.types._datetime import now as prefect_now

from ascob_flows.control import AlreadyFinal, request_stop
from ascob_flows.engine_compat import engine_settings, tune_flow_engine
from ascob_flows.flow import DEPLOYMENT_NAME, FLOW_NAME, ascob_job
from ascob_flows.ports import RunRecord
from ascob_flows.runtime import Runtime, install_runtime
from ascob_flows.status import RunStatus
from ascob_flows.ui import final_state, flow_run_name

log = logging.getLogger(__name__)
_CREATE_ATTEMPTS = 20


async def ensure_deployment(
    client: PrefectClient, name: str = DEPLOYMENT_NAME, flow: Flow[Any, Any] = ascob_job
) -> UUID:
    """Register the deployment ``ascob-job/<name>`` (idempotent) and return its id."""
    flow_id = await client.create_flow(flow)
    return await client.create_deployment(
        flow_id=flow_id,
        name=name,
        entrypoint="ascob_flows/flow.py:ascob_job",
        description="ASCOB runs. Run it with a job_spec to submit an ASCOB job from Prefect.",
        parameter_openapi_schema=_parameter_schema(flow),
        enforce_parameter_schema=False,
        paused=False,
        tags=[],  # every tag is one more row per event of every flow run
    )


def _parameter_schema(flow: Flow[Any, Any]) -> dict[str, Any]:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow).model_dump_for_openapi()


def launch_key(rec: RunRecord) -> str:
    """Idempotency key of a run's flow run: unique per run even across ASCOB installations
    sharing one Prefect server (derived from the run's secret webhook id, which it does not
    reveal)."""
    digest = hashlib.sha256(f"launch:{rec.webhook_id}".encode()).hexdigest()[:20]
    return f"ascob-run-{rec.id}-{digest}"


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in (408, 429, 500, 502, 503, 504)
    return isinstance(exc, httpx.TransportError | OSError | TimeoutError)


class Backoff:
    """Exponential backoff between attempts against the Prefect server."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap, self.delay = first, cap, 0.0

    async def failed(self) -> None:
        self.delay = min(self.cap, self.delay * 2 or self.first)
        await asyncio.sleep(self.delay)

    def ok(self) -> None:
        self.delay = 0.0


class Launcher:
    """Creates the missing flow runs of recorded runs; ``kick()`` is thread-safe.

    The launcher of an executor's process (``ascob serve``, ``ascob executor``; it runs in the
    executor's event loop) creates the flow run already claimed for that executor (Pending,
    marked with a nonce) while the executor has room, and hands it over: one write on the
    Prefect server instead of a create, a read and a claim. The launcher of ``ascob api``
    creates Scheduled flow runs, which executors claim."""

    def __init__(self, runtime: Runtime, executor: Executor | None = None) -> None:
        self.runtime = runtime
        self.executor = executor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick = asyncio.Event()
        self.sweep_interval = 2.0
        self.sweep_grace = 10.0
        self.concurrency = 4

    def kick(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._kick.set)

    async def run(self, client: PrefectClient, deployment_id: UUID) -> None:
        self._loop = asyncio.get_running_loop()
        # a SQLite-backed Prefect server answers 503 ("database is locked") to a create that
        # races another write; Prefect's client would wait 2, 4, 8, 16, 32 s. The idempotency
        # key makes an immediate, short-jittered retry safe, so this task's client calls do not
        # retry by themselves. (Set once for the task: building settings costs milliseconds.)
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
                ids = await asyncio.to_thread(
                    self.runtime.repo.runs_to_launch, 200, 0.0 if kicked else self.sweep_grace
                )
                if not ids:
                    break
                if not kicked:
                    random.shuffle(ids)
                try:
                    # a few at a time: a burst of writes makes a SQLite-backed Prefect server
                    # answer "database is locked" for everything, including running flows
                    gate = asyncio.Semaphore(self.concurrency)
                    await asyncio.gather(
                        *(self._create(client, deployment_id, i, gate) for i in ids)
                    )
                    backoff.ok()
                except Exception as exc:
                    log.warning(
                        "creating flow runs failed (%r); retrying",
                        exc,
                        exc_info=not _transient(exc),
                    )
                    await backoff.failed()

    async def _create(
        self, client: PrefectClient, deployment_id: UUID, run_id: int, gate: asyncio.Semaphore
    ) -> None:
        async with gate:
            await self._create_one(client, deployment_id, run_id)

    async def _create_one(self, client: PrefectClient, deployment_id: UUID, run_id: int) -> None:
        rec = await self.runtime.record(run_id)
        if rec.flow_run_id is not None:
            return  # another launcher (API replica or executor) got there first
        executor = self.executor
        claim = await executor.reserve() if executor is not None else None
        try:
            flow_run = await self._create_flow_run(client, deployment_id, rec, claim)
            await asyncio.to_thread(self.runtime.repo.set_flow_run, run_id, str(flow_run.id))
            log.info("run %s: flow run %s created", run_id, flow_run.id, extra={"runId": run_id})
            if executor is not None:
                await executor.adopt(flow_run, rec, claim)
        finally:
            if executor is not None and claim is not None:
                executor.unreserve()

    async def _create_flow_run(
        self, client: PrefectClient, deployment_id: UUID, rec: RunRecord, state: State[Any] | None
    ) -> FlowRun:
        tags = [f"backend:{rec.backend_id}"]
        if rec.submitter:
            tags.append(f"owner:{rec.submitter}")
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                flow_run = await client.create_flow_run_from_deployment(
                    deployment_id,
                    parameters={"run_id": rec.id},
                    name=flow_run_name(rec.id, rec.description),
                    tags=tags,
                    idempotency_key=launch_key(rec),
                    state=state,
                )
                break
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 503 or attempt == _CREATE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0.05, 0.25))
        if flow_run.deployment_id != deployment_id or flow_run.parameters.get("run_id") != rec.id:
            raise RuntimeError(
                f"run {rec.id}: Prefect returned flow run {flow_run.id} of another deployment "
                "for its idempotency key"
            )
        return flow_run


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


async def _supervise(name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Keep a background loop alive: log its crash and start it again."""
    while True:
        try:
            await job()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("executor loop %s crashed; restarting it", name)
            await asyncio.sleep(1.0)


class Executor:
    """Claims and runs flow runs of the deployment. Start it with :meth:`start_in_thread`."""

    def __init__(
        self,
        runtime: Runtime,
        executor_id: str,
        *,
        max_concurrent: int = 5000,
        start_rate: float = 20.0,
        claim_interval: float = 1.0,
        heartbeat_interval: float = 5.0,
        executor_ttl: float = 20.0,
        with_launcher: bool = True,
        deployment_name: str = DEPLOYMENT_NAME,
    ) -> None:
        self.runtime = runtime
        self.executor_id = executor_id
        self.max_concurrent = max_concurrent
        self.start_rate = start_rate
        self.claim_interval = claim_interval
        self.heartbeat_interval = heartbeat_interval
        self.executor_ttl = executor_ttl
        self.deployment_name = deployment_name
        self.stats_interval = 30.0
        self.cancel_interval = 2.0
        self.cancel_margin = timedelta(minutes=5)
        self._cancelled_since: Any = None  # a Prefect datetime once the first look is done
        self.claim_concurrency = 4
        self.active: dict[UUID, asyncio.Task[Any]] = {}
        self.stats = Stats()
        self.active_runs = runtime.active_runs
        runtime.executor_id = executor_id
        self.launcher = Launcher(runtime, self) if with_launcher else None
        self._reserved = 0  # flow runs the launcher is creating claimed for this executor
        self._next_start = 0.0
        self._fresh: dict[UUID, FlowRun] = {}  # created by this process's launcher
        self._claiming: set[UUID] = set()
        self._read_due = True
        self.deployment_id: UUID | None = None
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick_event: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ thread control

    def start_in_thread(self) -> None:
        self._thread = threading.Thread(
            target=self._thread_main, name="ascob-executor", daemon=True
        )
        self._thread.start()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.run())
        except BaseException as exc:  # reported to the main thread
            self.failed = exc
            log.exception("executor stopped with an error")
        finally:
            self.ready.set()

    def kick(self) -> None:
        """Read the deployment's Scheduled flow runs now, to claim them (thread-safe)."""
        self._read_due = True
        loop, event = self._loop, self._kick_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def stop(self, timeout: float = 30.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._kick_event = asyncio.Event()
        self._stop = asyncio.Event()
        install_runtime(self.runtime)
        tune_flow_engine()
        with engine_settings():
            await self._run()

    async def _run(self) -> None:
        assert self._stop is not None
        # one API client for the executor and all its flow runs (the engine reuses the
        # context's client instead of building one, with its SSL context, per flow run)
        async with AsyncClientContext.get_or_create() as client_context:
            client = client_context.client
            backoff = Backoff()
            while True:
                try:
                    self.deployment_id = await ensure_deployment(client, self.deployment_name)
                    break
                except Exception as exc:
                    log.warning("Prefect server not ready (%r); retrying", exc)
                    await backoff.failed()
            await asyncio.to_thread(
                self.runtime.repo.executor_heartbeat, self.executor_id, self.executor_ttl
            )
            deployment_id = self.deployment_id
            jobs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
                "status-watch": self.runtime.watch_statuses,
                "heartbeat": self._heartbeat_loop,
                "reaper": lambda: self._reaper_loop(client),
                "claimer": lambda: self._claim_loop(client),
                "canceller": lambda: self._cancel_loop(client),
            }
            if self.launcher is not None:
                launcher = self.launcher
                jobs["launcher"] = lambda: launcher.run(client, deployment_id)
            loops = [
                asyncio.create_task(_supervise(name, job), name=name) for name, job in jobs.items()
            ]
            self.ready.set()
            log.info(
                "executor %s ready (deployment %s/%s)",
                self.executor_id,
                FLOW_NAME,
                self.deployment_name,
            )
            try:
                await self._stop.wait()
            finally:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                # runs keep their locks and state: the next executor resumes them
                for task in list(self.active.values()):
                    task.cancel()
                await asyncio.gather(*self.active.values(), return_exceptions=True)
                await self.runtime.locks.aclose()
                await self.runtime.backends.aclose()  # the clients of this event loop

    async def _heartbeat_loop(self) -> None:
        last_report = time.monotonic()
        while True:
            if time.monotonic() - last_report >= self.stats_interval:
                last_report = time.monotonic()
                log.info(
                    "executor %s: %d live flow runs; %s",
                    self.executor_id,
                    len(self.active),
                    self.stats.report(),
                )
            try:
                await asyncio.to_thread(
                    self.runtime.repo.executor_heartbeat, self.executor_id, self.executor_ttl
                )
                await self.runtime.locks.keepalive(list(self.active_runs))
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            await asyncio.sleep(self.heartbeat_interval)

    async def _reaper_loop(self, client: PrefectClient) -> None:
        while True:
            try:
                await self._reap(client)
            except Exception:
                log.warning("reaping orphaned runs failed", exc_info=True)
            await asyncio.sleep(max(self.heartbeat_interval * 2, 1.0))

    async def _reap(self, client: PrefectClient) -> None:
        repo = self.runtime.repo
        alive = await asyncio.to_thread(repo.live_executors)
        orphans = await asyncio.to_thread(repo.orphaned_runs, self.executor_id, alive, 500)
        resumed = 0
        for run_id in orphans:
            if run_id in self.active_runs:
                continue
            rec = await self.runtime.record(run_id)
            if rec.flow_run_id is None:
                continue
            if rec.executor_id == self.executor_id and await self._waits_for_claim(
                client, UUID(rec.flow_run_id)
            ):
                continue  # handed back already: Scheduled, waiting for an executor
            resumed += await self._resume(client, rec, f"its executor {rec.executor_id} is gone")
        resumed += await self._reap_stuck_claims(client, alive)
        if resumed:
            self.kick()

    async def _resume(self, client: PrefectClient, rec: RunRecord, why: str) -> bool:
        """Take the run over in the repository (one reaper wins) and hand its flow run back
        to Prefect as Scheduled: the next claim carries on from the repository's state."""
        assert rec.flow_run_id is not None
        if not await asyncio.to_thread(
            self.runtime.repo.claim_for_executor, rec.id, self.executor_id, rec.executor_id
        ):
            return False
        log.warning("run %s: resuming (%s)", rec.id, why, extra={"runId": rec.id})
        await client.set_flow_run_state(
            UUID(rec.flow_run_id), Scheduled(name="Resuming"), force=True
        )
        return True

    async def _waits_for_claim(self, client: PrefectClient, flow_run_id: UUID) -> bool:
        try:
            flow_run = await client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return False
        return flow_run.state is not None and flow_run.state.type == StateType.SCHEDULED

    async def _reap_stuck_claims(self, client: PrefectClient, alive: list[str]) -> int:
        """A flow run claimed (Pending) by an executor that died before it recorded the claim
        in the repository: Pending for longer than an executor's TTL, no live executor."""
        assert self.deployment_id is not None
        pending = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))
            ),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id])),
            limit=200,
        )
        horizon = prefect_now("UTC") - timedelta(seconds=self.executor_ttl)
        resumed = 0
        for flow_run in pending:
            run_id = flow_run.parameters.get("run_id")
            if flow_run.id in self.active or run_id is None or flow_run.state is None:
                continue
            if flow_run.state.timestamp > horizon or int(run_id) in self.active_runs:
                continue
            rec = await self.runtime.record(int(run_id))
            if rec.status.is_final or rec.flow_run_id != str(flow_run.id):
                continue
            if rec.executor_id is not None and rec.executor_id in alive:
                continue
            resumed += await self._resume(client, rec, "its claim was never recorded")
        return resumed

    async def _cancel_loop(self, client: PrefectClient) -> None:
        """Cancel pressed in the Prefect UI stops the ASCOB run, like DELETE /api/runs/{id}."""
        while True:
            await asyncio.sleep(self.cancel_interval)
            try:
                await self._honour_cancellations(client)
            except Exception:
                log.warning("reading cancelled flow runs failed", exc_info=True)

    async def _honour_cancellations(self, client: PrefectClient) -> None:
        assert self.deployment_id is not None
        repo, rt = self.runtime.repo, self.runtime
        wanted: list[int] = []
        # Cancelled flow runs: the latest 100 at start, then only those that ended since the
        # last look (with a margin for clocks): every ABORTED run's flow run ends Cancelled, and
        # reading them all again every few seconds would load the Prefect server for nothing
        since = self._cancelled_since
        next_since = prefect_now("UTC") - self.cancel_margin
        for state_type, sort, ended in (
            (StateType.CANCELLING, FlowRunSort.START_TIME_DESC, None),
            (StateType.CANCELLED, FlowRunSort.END_TIME_DESC, since),
        ):
            flow_runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state_type])),
                    end_time=None if ended is None else FlowRunFilterEndTime(after_=ended),
                ),
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[self.deployment_id])
                ),
                sort=sort,
                limit=100,
            )
            for flow_run in flow_runs:
                run_id = flow_run.parameters.get("run_id")
                if run_id is None:
                    run_id = await asyncio.to_thread(repo.run_for_flow_run, str(flow_run.id))
                if run_id is not None:
                    wanted.append(int(run_id))
        self._cancelled_since = next_since
        if not wanted:
            return
        statuses = await asyncio.to_thread(repo.statuses, wanted)
        for run_id, status in statuses.items():
            if status.is_final or status is RunStatus.ABORTING:
                continue
            try:
                await request_stop(
                    repo, rt.locks, rt.backends, run_id, force=False, reason="cancelled in Prefect"
                )
            except AlreadyFinal:
                continue
            rt.notify(run_id)

    async def reserve(self) -> State[Any] | None:
        """For this process's launcher (same event loop): the Pending state that claims the flow
        run it is about to create, or None when this executor is full. Paced like every start;
        :meth:`unreserve` afterwards, whatever happened."""
        if len(self.active) + self._reserved >= self.max_concurrent:
            return None
        self._reserved += 1
        await self._pace()
        return Pending(message=f"claimed at creation by {self.executor_id} ({uuid.uuid4().hex})")

    def unreserve(self) -> None:
        self._reserved -= 1

    async def adopt(self, flow_run: FlowRun, rec: RunRecord, claim: State[Any] | None) -> None:
        """A flow run this process's launcher just created: run it if the create claimed it
        (Prefect answers an idempotent create with the flow run another launcher made, in its
        own state: the nonce tells), else claim it without reading it back."""
        state = flow_run.state
        if state is None:
            return
        if claim is not None and state.type == StateType.PENDING and state.message == claim.message:
            self.stats.created += 1
            await self._start(flow_run, rec.id, rec.executor_id)
        elif state.type == StateType.SCHEDULED:
            self._fresh[flow_run.id] = flow_run
            if self._kick_event is not None:
                self._kick_event.set()

    async def _pace(self) -> None:
        """Start no more than ``start_rate`` flow runs per second."""
        if self.start_rate <= 0:
            return
        now = time.monotonic()
        wait = self._next_start - now
        self._next_start = max(now, self._next_start) + 1.0 / self.start_rate
        if wait > 0:
            await asyncio.sleep(wait)

    async def _claim_loop(self, client: PrefectClient) -> None:
        """Claim the flow runs the launcher hands over, and every ``claim_interval`` (or when
        kicked) read the deployment's Scheduled flow runs: created by other processes, by
        ``run_deployment``, or handed back by a reaper."""
        assert self._kick_event is not None and self.deployment_id is not None
        backoff = Backoff()
        last_read = float("-inf")
        while True:
            try:
                await asyncio.wait_for(self._kick_event.wait(), self.claim_interval)
            except TimeoutError:
                pass
            self._kick_event.clear()
            while len(self.active) < self.max_concurrent:
                room = min(100, self.max_concurrent - len(self.active))
                if self._fresh:
                    batch = [self._fresh.pop(i) for i in list(self._fresh)[:room]]
                    await self._claim_batch(client, batch, checked=True)
                    continue
                if not self._read_due and time.monotonic() - last_read < self.claim_interval:
                    break
                self._read_due, last_read = False, time.monotonic()
                try:
                    batch = await client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(
                            state=FlowRunFilterState(
                                type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                            ),
                            next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(
                                before_=prefect_now("UTC")  # type: ignore[arg-type]
                            ),
                        ),
                        deployment_filter=DeploymentFilter(
                            id=DeploymentFilterId(any_=[self.deployment_id])
                        ),
                        sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
                        limit=room,
                    )
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
            await self._pace()
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
        if flow_run.id in self.active:
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
            run_id = flow_run.parameters.get("run_id")
            known = None if run_id is None else (await self.runtime.record(int(run_id))).executor_id
            result: Any = await client.set_flow_run_state(flow_run.id, Pending(), force=False)
            self.stats.claim(time.monotonic() - started, result.status == SetStateStatus.ACCEPT)
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
        await self._start(flow_run, None if run_id is None else int(run_id), known)

    async def _start(self, flow_run: FlowRun, run_id: int | None, known: str | None) -> None:
        """Run a flow run this executor claimed in Prefect."""
        if run_id is not None:
            # recorded only if no reaper took the run over meanwhile (it judges a claim that
            # stays unrecorded for an executor's TTL a dead executor's)
            if not await asyncio.to_thread(
                self.runtime.repo.claim_for_executor, run_id, self.executor_id, known
            ):
                log.warning("run %s: taken over while being claimed; not starting it", run_id)
                return
            self.active_runs.add(run_id)
        task = asyncio.create_task(self._execute(flow_run, run_id), name=f"flow-run-{flow_run.id}")
        self.active[flow_run.id] = task

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

    async def _execute(self, flow_run: Any, run_id: int | None) -> None:
        try:
            await run_flow_async(
                ascob_job, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
            )
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("flow run %s ended with an error", flow_run.id)
        finally:
            self.stats.finished += 1
            full = len(self.active) >= self.max_concurrent
            self.active.pop(flow_run.id, None)
            if run_id is not None:
                self.active_runs.discard(int(run_id))
            if full:  # there is room again: look for Scheduled flow runs now
                self.kick()
