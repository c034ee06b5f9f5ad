"""The API's rules for what a portal and a job may do to a run, in-process (no Prefect)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from ascob_api.service import Services
from ascob_flows.clock import utcnow, wire_time
from ascob_flows.machine import BEGIN_DISPATCH, READY_TO_DISPATCH, RECORD_SUBMISSION, Step
from tests.unit.conftest import DUMMY, WEBHOOK, submit


def webhook_of(services: Services, run_id: int) -> str:
    return services.repo.get_run(run_id).webhook_id


def report(api: TestClient, hook: str, **body: object) -> tuple[int, dict[str, object]]:
    r = api.post(f"/api/webhooks/runs/{hook}", json=body, headers={"X-Api-Token": WEBHOOK})
    return r.status_code, r.json()


def move(services: Services, run_id: int, *steps: Step, **fields: object) -> None:
    for step in steps:
        assert services.repo.apply(run_id, step, **fields) is not None, step.name


def dispatched(services: Services, api: TestClient) -> int:
    run_id = submit(api, description="d")
    move(services, run_id, READY_TO_DISPATCH, BEGIN_DISPATCH)
    services.repo.apply(
        run_id,
        RECORD_SUBMISSION,
        keys=lambda k: {**k, "dummyJobId": "j1"},
        submission_time=utcnow(),
    )
    return run_id


# ---------------------------------------------------------------------- webhook reports


@pytest.mark.parametrize(
    "status", ["PENDING_SUBMIT", "ABORTING", "IN_DOUBT", "SUBMITTED", "DEFINED"]
)
def test_a_job_cannot_report_what_only_ascob_decides(
    services: Services, api: TestClient, status: str
) -> None:
    run_id = dispatched(services, api)
    code, body = report(api, webhook_of(services, run_id), status="RUNNING")
    assert code == 200 and body["status"] == "RUNNING"
    code, body = report(api, webhook_of(services, run_id), status=status)
    assert code == 400, body
    assert "RUNNING, SUCCEDED, FAILED, ABORTED" in str(body["error"])
    assert api.get(f"/api/runs/{run_id}").json()["status"] == "RUNNING"


def test_an_unknown_status_is_a_400(services: Services, api: TestClient) -> None:
    run_id = dispatched(services, api)
    code, body = report(api, webhook_of(services, run_id), status="DONE")
    assert code == 400 and "expected one of" in str(body["error"])


def test_a_manual_start_run_cannot_be_reported_running_before_it_is_started(
    services: Services, api: TestClient
) -> None:
    run_id = submit(api, description="manual", manualStart=True)
    hook = webhook_of(services, run_id)
    code, body = report(api, hook, status="RUNNING")
    assert code == 409, body
    assert "not been dispatched" in str(body["error"])
    info = api.get(f"/api/runs/{run_id}").json()
    assert info["status"] == "DEFINED" and info["submissionTime"] is None
    assert api.get(f"/api/runs/{run_id}/start").status_code == 200
    stopped = api.delete(f"/api/runs/{run_id}")
    assert stopped.status_code == 200 and stopped.json()["status"] == "ABORTED"


def test_a_waiting_run_cannot_be_reported_succeeded(services: Services, api: TestClient) -> None:
    run_id = submit(api, description="w", locks=[{"key": "k"}])
    from ascob_flows.machine import WAIT_FOR_LOCKS

    move(services, run_id, WAIT_FOR_LOCKS)
    code, _ = report(api, webhook_of(services, run_id), status="SUCCEEDED")
    assert code == 409
    assert api.get(f"/api/runs/{run_id}").json()["status"] == "WAITING_LOCKS"


def test_keys_sent_before_dispatch_are_kept_for_it(services: Services, api: TestClient) -> None:
    run_id = submit(api, description="k")
    code, _ = report(api, webhook_of(services, run_id), identificationKeys={"ticket": "T-1"})
    assert code == 200
    move(services, run_id, READY_TO_DISPATCH, BEGIN_DISPATCH)
    services.repo.apply(
        run_id,
        RECORD_SUBMISSION,
        keys=lambda k: {**k, "dummyJobId": "j9"},
        submission_time=utcnow(),
    )
    keys = services.repo.get_run(run_id).identification_keys
    assert keys == {"ticket": "T-1", "dummyJobId": "j9"}


def test_a_report_that_would_go_backwards_changes_nothing(
    services: Services, api: TestClient
) -> None:
    run_id = dispatched(services, api)
    hook = webhook_of(services, run_id)
    assert api.delete(f"/api/runs/{run_id}").json()["status"] == "ABORTING"
    code, body = report(api, hook, status="RUNNING")
    assert code == 200 and body["status"] == "ABORTING"
    code, body = report(api, hook, status="ABORTED")
    assert code == 200 and body["status"] == "ABORTED"
    code, _ = report(api, hook, status="RUNNING")  # the run has ended: the webhook is gone
    assert code == 404
    assert api.get(f"/api/runs/{run_id}").json()["status"] == "ABORTED"


def test_a_job_reports_success(services: Services, api: TestClient) -> None:
    run_id = dispatched(services, api)
    code, body = report(api, webhook_of(services, run_id), status="succeeded")
    assert code == 200 and body["status"] == "SUCCEDED" and body["endTime"]


# ---------------------------------------------------------------------- search


def test_search_time_filters_are_strict(services: Services, api: TestClient) -> None:
    first, second, third = (submit(api, description=f"s{i}") for i in range(3))
    times = {r: services.repo.get_run(r).defined_time for r in (first, second, third)}
    body = {
        "createdAfterFilter": wire_time(times[first]),
        "createdBeforeFilter": wire_time(times[third]),
    }
    found = api.post("/api/search/runs", json=body).json()["items"]
    assert [i["id"] for i in found] == [second]
    body = {"createdAfterFilter": wire_time(times[second])}
    assert [i["id"] for i in api.post("/api/search/runs", json=body).json()["items"]] == [third]
    later = wire_time(times[third] + timedelta(seconds=1))
    assert api.post("/api/search/runs", json={"createdAfterFilter": later}).json()["items"] == []


# ---------------------------------------------------------------------- JobSpec validation


@pytest.mark.parametrize("value", [0, -5, 10**9, "soon", 1.5])
def test_max_lock_wait_is_validated(api: TestClient, value: object) -> None:
    r = api.post("/api/runs", json={"jobSpec": {"labels": DUMMY, "maxLockWaitSeconds": value}})
    assert r.status_code == 400, r.text
    assert "maxLockWaitSeconds" in r.json()["error"]


def test_max_lock_wait_is_kept_in_the_spec(services: Services, api: TestClient) -> None:
    run_id = submit(api, description="bounded", maxLockWaitSeconds=90)
    assert services.repo.get_record(run_id).max_lock_wait == 90
    plain = submit(api, description="unbounded")
    assert "maxLockWaitSeconds" not in services.repo.get_run(plain).spec


def test_runtime_variables_are_replaced_and_unknown_ones_refused(
    services: Services, api: TestClient
) -> None:
    run_id = submit(
        api,
        description="run %%RUNID%% by %%SUBMITTER%%",
        submitter="alice",
        runtimeVariables=True,
        parameters={"hook": "%%WEBHOOKID%%", "token": "%%LOCKTOKEN%%"},
    )
    run = services.repo.get_run(run_id)
    assert run.description == f"run {run_id} by alice"
    assert run.effective_spec["parameters"] == {"hook": run.webhook_id, "token": "%%LOCKTOKEN%%"}
    r = api.post(
        "/api/runs",
        json={"jobSpec": {"labels": DUMMY, "runtimeVariables": True, "description": "%%NOPE%%"}},
    )
    assert r.status_code == 400 and "%%NOPE%%" in r.json()["error"]


def test_stopping_an_ended_run_is_a_400(services: Services, api: TestClient) -> None:
    run_id = submit(api, description="x")
    assert api.delete(f"/api/runs/{run_id}").json()["status"] == "ABORTED"
    r = api.delete(f"/api/runs/{run_id}")
    assert r.status_code == 400 and "already ABORTED" in r.json()["error"]
    assert api.get("/api/runs/999999").status_code == 404


# ---------------------------------------------------------------------- RunInfo and routes


def test_run_info_tells_what_a_portal_needs(services: Services, api: TestClient) -> None:
    run_id = submit(
        api,
        description="x",
        labels={**DUMMY, "env": "prod"},
        parameters={"P": "1"},
        locks=[{"key": "db"}],
        manualStart=True,
    )
    info = api.get(f"/api/runs/{run_id}").json()
    original = {"id", "parentId", "status", "description", "submitter", "definedTime"}
    assert original | {"submissionTime", "endTime"} <= set(info)
    assert info["backendId"] == "dummyBackend" and info["manualStart"] is True
    assert info["labels"] == {**DUMMY, "env": "prod"} and info["parameters"] == {"P": "1"}
    assert info["locks"] == ["db"] and info["message"] is None and info["backendUrl"] is None
    api.delete(f"/api/runs/{run_id}")
    found = api.post("/api/search/runs", json={}).json()["items"]
    assert found[0]["id"] == run_id and found[0]["message"] == "stopped before dispatch"


def test_post_is_accepted_beside_get_for_start_resubmit_refresh(
    services: Services, api: TestClient
) -> None:
    run_id = submit(api, description="m", manualStart=True)
    assert api.post(f"/api/runs/{run_id}/start").json()["status"] == "DEFINED"
    assert api.post(f"/api/runs/{run_id}/refresh").status_code == 200
    again = api.post(f"/api/runs/{run_id}/resubmit", params={"submitter": "bob"})
    assert again.status_code == 200
    assert services.repo.get_run(again.json()["runId"]).parent_id == run_id


async def test_a_queued_report_records_why_and_keeps_the_status(
    services: Services, api: TestClient
) -> None:
    from ascob_flows.control import apply_backend_report
    from backends import BackendStatus, StatusReport

    run_id = dispatched(services, api)
    queued = StatusReport(BackendStatus.QUEUED, "dag run x is queued in Airflow: ...")
    assert not await apply_backend_report(services.db, run_id, queued)
    run = api.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "SUBMITTED" and run["message"] == queued.message
    assert await apply_backend_report(services.db, run_id, StatusReport(BackendStatus.RUNNING))
    assert api.get(f"/api/runs/{run_id}").json()["status"] == "RUNNING"
    # once it runs, a late queued report changes nothing
    assert not await apply_backend_report(services.db, run_id, queued)
    assert api.get(f"/api/runs/{run_id}").json()["status"] == "RUNNING"
