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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_RESULT_STORAGE_TTL = 60.0
_applied = False


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
    _applied = True


def engine_settings() -> AbstractContextManager[Any]:
    """Prefect settings for the executor's flow runs: no per-run heartbeat thread."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
