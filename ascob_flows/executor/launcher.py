"""The launcher: creates the flow run of every recorded run that has none yet.

Idempotency key per run (``launch_key``), retried until Prefect answers: an outage delays runs,
loses none. See :class:`Launcher` for the claimed create of a process that has an executor.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
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
        self.concurrency = 4
        self.refused = 0  # creates refused (503, 429), for the tests
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
                code = exc.response.status_code
                if code not in (429, 503) or attempt == _CREATE_ATTEMPTS - 1:
                    raise
                self.refused += 1
                # this create's own short jittered pause (Retry-After when the server gives
                # one; Prefect's does not). Measured: a pause shared by all creates (AIMD on
                # the creates in flight) cut throughput 5x without fewer refusals, see
                # docs/benchmarks.md
                wait = retry_after(exc.response)
                await asyncio.sleep(random.uniform(0.05, 0.25) if wait is None else wait)
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
