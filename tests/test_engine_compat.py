"""The Prefect internals that ascob_flows.engine_compat adjusts are still where it expects."""

from __future__ import annotations

import threading

import prefect.flow_engine as engine
import prefect.results as results
from prefect import flow

from ascob_flows.engine_compat import engine_settings, tune_flow_engine


def test_targets_exist_in_this_prefect() -> None:
    assert callable(engine.observe_flow_run_suspension)
    assert callable(results._read_server_default_result_storage_block_id)
    assert callable(results._aread_server_default_result_storage_block_id)
    # the clean stop's hand-back replaces the crash handlers of the async engines
    import inspect

    import prefect.task_engine as task_engine

    for cls in (engine.AsyncFlowRunEngine, task_engine.AsyncTaskRunEngine):
        assert inspect.iscoroutinefunction(cls.handle_crash)
        assert list(inspect.signature(cls.handle_crash).parameters) == ["self", "exc"]


def test_engine_settings_turn_heartbeats_off() -> None:
    from prefect.settings import get_current_settings

    assert get_current_settings().flows.heartbeat_frequency is not None
    with engine_settings():
        assert get_current_settings().flows.heartbeat_frequency is None


def test_tuned_engine_starts_no_thread_per_flow_run(prefect_server) -> None:  # type: ignore[no-untyped-def]
    """A flow run in the tuned engine leaves the thread count as it was."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    tune_flow_engine()
    seen: list[int] = []

    @flow(persist_result=False)
    def probe() -> int:
        seen.append(threading.active_count())
        return 1

    settings = {PREFECT_API_URL: prefect_server.api_url, PREFECT_LOGGING_TO_API_ENABLED: False}
    with engine_settings(), temporary_settings(settings):
        probe()  # warm-up: the events client and API clients start their threads once
        before = threading.active_count()
        probe()
    assert seen[-1] <= before
