"""The settings ``ascob serve`` gives the local Prefect server it starts (issue 20): they reach
Prefect under the names this Prefect reads, and an operator's own environment wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from ascob_api.prefect_server import LOCAL_SERVER_SETTINGS, local_server_env


def test_the_local_server_batches_its_writes_and_skips_unused_loops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = local_server_env(tmp_path, {"PREFECT_API_URL": "http://elsewhere/api", "X": "1"})
    assert "PREFECT_API_URL" not in env  # the server is not a client of another server
    assert env["X"] == "1" and env["PREFECT_HOME"] == str(tmp_path / "prefect")
    for key, value in env.items():
        if key.startswith("PREFECT_"):
            monkeypatch.setenv(key, value)
    from prefect.settings import Settings

    services = Settings().server.services  # read from the environment, as the server does
    assert services.task_run_recorder.batch_size == 100
    assert services.task_run_recorder.flush_interval == 1
    assert services.event_persister.batch_size == 200
    assert not services.foreman.enabled
    assert not services.pause_expirations.enabled
    assert not services.repossessor.enabled
    # what operators see in the UI keeps its services: schedules, automations, cancellation
    assert services.scheduler.enabled and services.triggers.enabled
    assert services.cancellation_cleanup.enabled and services.late_runs.enabled


def test_an_operators_setting_wins(tmp_path: Path) -> None:
    key = "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED"
    assert key in LOCAL_SERVER_SETTINGS
    assert local_server_env(tmp_path, {key: "true"})[key] == "true"
