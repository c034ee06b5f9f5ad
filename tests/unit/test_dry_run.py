"""The dry run, POST /api/runs/validate: the submission's answer without the submission."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from ascob_api.service import Services
from tests.unit.conftest import DUMMY, submit


def runs(api: TestClient) -> list[dict[str, Any]]:
    r = api.post("/api/search/runs", json={})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def test_a_dry_run_says_what_would_happen_and_creates_nothing(
    services: Services, api: TestClient
) -> None:
    holder = submit(api, manualStart=True, locks=[{"key": "db"}])
    assert await services.locks.try_acquire(holder, ["db"]) is not None
    before_runs, before_locks = runs(api), await services.locks.snapshot()
    spec = {
        "labels": {**DUMMY, "status": "failed", "duration": "2"},
        "parameters": {"ENV": "prod"},
        "locks": [{"key": "db"}, {"key": "free"}],
    }
    r = api.post("/api/runs/validate", json={"jobSpec": spec})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["valid"] is True and got["backendId"] == "dummyBackend"
    assert got["parameters"] == {"ENV": "prod"} and got["labels"]["status"] == "failed"
    assert got["locks"] == [
        {"key": "db", "holderRunId": holder, "waitingRunIds": []},
        {"key": "free", "holderRunId": None, "waitingRunIds": []},
    ]
    assert got["wouldWait"] is True
    assert got["checks"] == ["dummyBackend: would end FAILED after 2 s"]
    # nothing created: no run, no place in the lock's queue
    assert runs(api) == before_runs
    assert await services.locks.snapshot() == before_locks
    free = api.post("/api/runs/validate", json={"jobSpec": {"labels": DUMMY}}).json()
    assert free["wouldWait"] is False and free["locks"] == []


def test_a_dry_run_refuses_what_the_submission_refuses_with_the_same_body(
    api: TestClient,
) -> None:
    for spec in (
        {"labels": {**DUMMY, "status": "SOMETIMES"}},
        {"labels": {"_execution_backend_id": "noSuchBackend"}},
        {"labels": DUMMY, "locks": [{"key": ""}]},
    ):
        before = runs(api)
        dry = api.post("/api/runs/validate", json={"jobSpec": spec})
        assert dry.status_code == 400, dry.text
        assert runs(api) == before
        real = api.post("/api/runs", json={"jobSpec": spec})
        assert (real.status_code, real.json()) == (400, dry.json())


def test_a_dry_run_needs_the_submit_permission(api: TestClient) -> None:
    anonymous = TestClient(api.app)
    r = anonymous.post("/api/runs/validate", json={"jobSpec": {"labels": DUMMY}})
    assert r.status_code == 401


def test_validate_is_not_taken_for_a_run_id(api: TestClient) -> None:
    r = api.get("/api/runs/validate")
    assert r.status_code == 405 and r.headers["allow"] == "POST", r.text
