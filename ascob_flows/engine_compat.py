"""Adjustments of Prefect's flow engine for thousands of long flow runs in one process.

Found by profiling one executor holding hundreds of live runs (see docs/benchmarks.md). Prefect
3.9's engine, per flow run:

1. starts a **heartbeat thread** (``flows.heartbeat_frequency``, default 180 s). ASCOB detects
   dead executors itself (executor rows with a TTL, then the reaper resumes their runs), so the
   executor runs its flows with heartbeats off: no thread per run;
2. starts, for flow runs of a deployment, a **thread with its own event loop and a websocket** to
   the Prefect server to notice a request to suspend the run, and blocks the calling event loop
   until it is connected. A SQLite-backed Prefect server serves at most 100 requests at once,
   websockets included, so past ~100 live runs every client stalls. ASCOB never suspends its flow
   runs (stop them through ASCOB or cancel them in the Prefect UI), so the observer is turned off;
3. builds a **synchronous API client** (an SSL context and an HTTP round trip, on the event loop)
   to read the server's default result storage, although ASCOB persists no results. The answer
   is cached for a minute.

``tune_flow_engine()`` applies 2 and 3 (module attributes of Prefect, checked by
``tests/test_engine_compat.py`` so an upgrade that moves them fails loudly);
``engine_settings()`` gives the settings for 1.

4. A stopping executor cancels its flow runs' asyncio tasks; Prefect's engine takes any
   cancellation for a crash: it logs ``Crash detected!`` at error level, sets the flow run and
   its running task run Crashed, and logs ``Finished in state …`` at error level. Inside
   :func:`handing_back` (the executor's clean stop) a cancelled flow run is instead handed
   back: Scheduled, named "Resuming", so the next executor claims it and carries on from the
   repository's state; its interrupted task run ends Cancelled ("Interrupted"). No error log,
   no Crashed state; each write is bounded (``HAND_BACK_LIMIT``), whatever the Prefect server
   does. A crash outside a clean stop is still a crash.
5. An executor that finds one of its runs taken over by another executor (it looked dead: a
   pause, a stall) cancels that flow run's task after :func:`drop_quietly`: the other executor
   runs the same flow run now, so this cancellation writes no state and logs no crash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Generator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_RESULT_STORAGE_TTL = 60.0
HAND_BACK_LIMIT = 3.0  # seconds for one hand-back write to the Prefect server
_applied = False
_handing_back: str | None = None  # the executor id while it stops cleanly
_dropped: set[str] = set()  # flow runs another executor carries on: this process writes nothing


def drop_quietly(flow_run_id: object) -> None:
    """The flow run's task is about to be cancelled because another executor took its run
    over (and runs the same flow run): its cancellation writes nothing to Prefect and logs no
    crash; the new owner's engine owns the flow run's states now."""
    _dropped.add(str(flow_run_id))


def forget_dropped(flow_run_id: object) -> None:
    _dropped.discard(str(flow_run_id))


def is_dropped(flow_run_id: object) -> bool:
    return str(flow_run_id) in _dropped


@contextmanager
def handing_back(executor_id: str) -> Generator[None, None, None]:
    """While inside, a cancelled flow run of this process is handed back, not crashed."""
    global _handing_back
    _handing_back = executor_id
    try:
        yield
    finally:
        _handing_back = None


def _is_hand_back(exc: BaseException) -> bool:
    import asyncio

    return _handing_back is not None and isinstance(exc, asyncio.CancelledError)


def _is_drop(exc: BaseException, flow_run_id: object) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError) and is_dropped(flow_run_id)


async def _bounded(write: Awaitable[Any], what: str) -> None:
    """One write of the hand-back: shielded from the cancellation it handles, bounded."""
    import anyio

    with anyio.CancelScope(shield=True, deadline=anyio.current_time() + HAND_BACK_LIMIT) as scope:
        try:
            await write
        except Exception as exc:
            log.warning("handing back: %s failed (%r)", what, exc)
    if scope.cancelled_caught:
        log.warning("handing back: %s took over %.0f s; left as it is", what, HAND_BACK_LIMIT)


def _patch_crash_handlers() -> None:
    from prefect.flow_engine import AsyncFlowRunEngine
    from prefect.states import Cancelled, Scheduled
    from prefect.task_engine import AsyncTaskRunEngine

    flow_crash = AsyncFlowRunEngine.handle_crash
    task_crash = AsyncTaskRunEngine.handle_crash

    async def handle_flow_crash(self: Any, exc: BaseException) -> None:
        if self.flow_run is not None and _is_drop(exc, self.flow_run.id):
            self._raised = exc
            return
        if not _is_hand_back(exc) or self.flow_run is None:
            await flow_crash(self, exc)
            return
        state: Any = Scheduled(name="Resuming", message=f"handed back by executor {_handing_back}")
        await _bounded(
            self.client.set_flow_run_state(self.flow_run.id, state, force=True),
            f"flow run {self.flow_run.id}",
        )
        self._raised = exc

    async def handle_task_crash(self: Any, exc: BaseException) -> None:
        if self.task_run is not None and _is_drop(exc, self.task_run.flow_run_id):
            self._raised = exc
            return
        if not _is_hand_back(exc) or self.task_run is None:
            await task_crash(self, exc)
            return
        state: Any = Cancelled(name="Interrupted", message="executor stopped; the flow run resumes")
        await _bounded(
            self.client.set_task_run_state(self.task_run.id, state, force=True),
            f"task run {self.task_run.id}",
        )
        self._raised = exc

    AsyncFlowRunEngine.handle_crash = handle_flow_crash  # type: ignore[method-assign]
    AsyncTaskRunEngine.handle_crash = handle_task_crash  # type: ignore[method-assign]


class _HandBackNoise(logging.Filter):
    """Drops the engine's "Finished in state …" error of a flow run being handed back."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if _handing_back is None and not is_dropped(getattr(record, "flow_run_id", None)):
            return True
        return not str(record.msg).startswith(("Finished in state", "Crash detected"))


@contextmanager
def _no_suspension_observer(*_args: Any, **_kwargs: Any) -> Generator[None, None, None]:
    yield


def _cached(fn: Callable[[], T], ttl: float) -> Callable[[], T]:
    memo: dict[str, Any] = {"at": float("-inf"), "value": None}

    def cached() -> T:
        now = time.monotonic()
        if now - memo["at"] > ttl:
            memo["value"] = fn()
            memo["at"] = now
        value: T = memo["value"]
        return value

    return cached


def _acached(fn: Callable[[], Any], ttl: float) -> Callable[[], Any]:
    memo: dict[str, Any] = {"at": float("-inf"), "value": None}

    async def cached() -> Any:
        now = time.monotonic()
        if now - memo["at"] > ttl:
            memo["value"] = await fn()
            memo["at"] = now
        return memo["value"]

    return cached


def tune_flow_engine() -> None:
    """Apply the adjustments (idempotent, process-wide)."""
    global _applied
    if _applied:
        return
    import prefect.flow_engine as engine
    import prefect.results as results

    engine.observe_flow_run_suspension = _no_suspension_observer
    results._read_server_default_result_storage_block_id = _cached(
        results._read_server_default_result_storage_block_id, _RESULT_STORAGE_TTL
    )
    results._aread_server_default_result_storage_block_id = _acached(
        results._aread_server_default_result_storage_block_id, _RESULT_STORAGE_TTL
    )
    _patch_crash_handlers()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_HandBackNoise())
    _applied = True


def engine_settings() -> AbstractContextManager[Any]:
    """Prefect settings for the executor's flow runs: no per-run heartbeat thread."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
