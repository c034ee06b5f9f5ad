"""The quick start of the README, as a newcomer runs it."""

from __future__ import annotations

from tests.harness import Ascob


def test_dummy_job_runs_to_succeded(ascob: Ascob) -> None:
    run_id = ascob.submit(
        {"description": "dummy", "labels": {"_execution_backend_id": "dummyBackend"}}
    )
    info = ascob.wait_status(run_id, "SUCCEDED")
    assert info["id"] == run_id
    assert info["parentId"] is None
    assert info["description"] == "dummy"
    assert info["submissionTime"] and info["endTime"] and info["definedTime"]
