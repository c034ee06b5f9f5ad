"""The host of an executor's parts: one thread, one event loop, the supervised loops.

It registers the deployment, then runs the parts (each ``run(client)`` with one shared Prefect
client), renews this executor's liveness row and its runs' lock leases (the heartbeat), logs the
stats line, and on stop cancels the loops and the live flow runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any
from uuid import UUID

from prefect.context import AsyncClientContext

from ascob_flows.engine_compat import engine_settings, tune_flow_engine
from ascob_flows.executor.canceller import Canceller
from ascob_flows.executor.claimer import Claimer
from ascob_flows.executor.gate import StartGate
from ascob_flows.executor.launcher import Launcher
from ascob_flows.executor.queries import Queries, ensure_deployment
from ascob_flows.executor.reaper import Reaper
from ascob_flows.executor.support import Backoff, RepositoryTrust, log, supervise, transient
from ascob_flows.flow import DEPLOYMENT_NAME, FLOW_NAME
from ascob_flows.runtime import Runtime, install_runtime


class Executor:
    """Claims and runs flow runs of the deployment. Start it with :meth:`start_in_thread`."""

    def __init__(
        self,
        runtime: Runtime,
        executor_id: str,
        *,
        installation: str,
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
        self.heartbeat_interval = heartbeat_interval
        self.executor_ttl = executor_ttl
        self.trust = RepositoryTrust(executor_ttl)  # the heartbeat tells, the reaper asks
        self.deployment_name = deployment_name
        self.stats_interval = 30.0
        runtime.executor_id = executor_id
        self.gate = StartGate(
            runtime,
            executor_id,
            max_concurrent=max_concurrent,
            start_rate=start_rate,
            on_room=self.kick,
        )
        self.claimer = Claimer(runtime, self.gate, claim_interval)
        self.installation = installation
        self.launcher = (
            Launcher(runtime, self, installation=installation) if with_launcher else None
        )
        self.deployment_id: UUID | None = None
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
        self.claimer.kick()

    def stop(self, timeout: float = 30.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        install_runtime(self.runtime)
        tune_flow_engine()
        with engine_settings():
            await self._run()

    async def _register(self, client: Any) -> UUID:
        backoff = Backoff()
        while True:
            try:
                return await ensure_deployment(client, self.deployment_name)
            except Exception as exc:
                log.warning("Prefect server not ready (%r); retrying", exc)
                await backoff.failed()

    async def _run(self) -> None:
        assert self._stop is not None
        # one API client for the executor and all its flow runs (the engine reuses the
        # context's client instead of building one, with its SSL context, per flow run)
        async with AsyncClientContext.get_or_create() as client_context:
            client = client_context.client
            self.deployment_id = await self._register(client)
            queries = Queries(self.deployment_id, self.runtime, self.installation)
            self.claimer.queries = queries
            await self.runtime.db.executor_heartbeat(self.executor_id, self.executor_ttl)
            reaper = Reaper(
                self.runtime,
                self.executor_id,
                self.gate,
                queries,
                executor_ttl=self.executor_ttl,
                interval=max(self.heartbeat_interval * 2, 1.0),
                on_resumed=self.kick,
                trust=self.trust,
            )
            canceller = Canceller(self.runtime, queries)
            jobs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
                "status-watch": self.runtime.watch_statuses,
                "heartbeat": self._heartbeat_loop,
                "lease-renewal": self._lease_loop,
                "reaper": lambda: reaper.run(client),
                "claimer": lambda: self.claimer.run(client),
                "canceller": lambda: canceller.run(client),
            }
            if self.launcher is not None:
                launcher = self.launcher
                launcher.deployment_id = self.deployment_id
                jobs["launcher"] = lambda: launcher.run(client)
            loops = [
                asyncio.create_task(supervise(name, job), name=name) for name, job in jobs.items()
            ]
            self.ready.set()
            log.info(
                "executor %s ready (deployment %s/%s, installation %s)",
                self.executor_id,
                FLOW_NAME,
                self.deployment_name,
                self.installation,
            )
            try:
                await self._stop.wait()
            finally:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                # runs keep their locks and state: the next executor resumes them
                await self.gate.stop_all()
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
                    len(self.gate.active),
                    self.gate.stats.report(),
                )
            await self.heartbeat()
            await asyncio.sleep(self.heartbeat_interval)

    async def _lease_loop(self) -> None:
        while True:
            await self.renew_leases()
            await asyncio.sleep(self.heartbeat_interval)

    async def beat(self) -> None:
        """One heartbeat and one lease renewal, side by side."""
        await asyncio.gather(self.heartbeat(), self.renew_leases())

    async def heartbeat(self) -> None:
        """Renew this executor's row, then stop following the runs another executor took over.

        Its own loop, apart from the leases' renewal (found by the soak): a lock store without
        quorum made each renewal wait for its timeout, the row was not renewed in time, and
        other executors took over the runs of this live one."""
        try:
            await self.runtime.db.executor_heartbeat(self.executor_id, self.executor_ttl)
            self.trust.succeeded()
        except Exception as exc:
            self.trust.failed()
            log.warning("heartbeat failed", exc_info=not transient(exc))
            return
        try:
            taken = await self.runtime.db.taken_over(self.executor_id, self.gate.active_runs)
        except Exception as exc:
            log.warning("reading the owners of live runs failed", exc_info=not transient(exc))
            return
        self.gate.drop(taken)

    async def renew_leases(self) -> None:
        """Renew the lock leases of this executor's runs: apart from the repository's heartbeat,
        so that they do not lapse while the repository is down (found by the soak: a PostgreSQL
        outage longer than the lease let other runs take the locks of running jobs)."""
        try:
            await self.runtime.locks.keepalive(list(self.gate.active_runs))
        except Exception as exc:
            log.warning("lock lease renewal failed", exc_info=not transient(exc))
