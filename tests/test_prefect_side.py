"""What operators see and do in Prefect: names, tags, state names, artifacts, Cancel, and
ASCOB jobs started from the deployment."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from typing import Any

import httpx

from tests.harness import Ascob, wait_until

DUMMY = {"_execution_backend_id": "dummyBackend"}


def flow_run_id(ascob: Ascob, run_id: int) -> str:
    def read() -> str | None:
        db = sqlite3.connect(ascob.home / "ascob.db", timeout=30)
        try:
            row = db.execute("select flow_run_id from runs where id = ?", (run_id,)).fetchone()
        finally:
            db.close()
        return row[0] if row and row[0] else None

    return str(wait_until(read, 30, f"run {run_id} to have a flow run"))


def prefect(ascob: Ascob) -> httpx.Client:
    return httpx.Client(base_url=ascob.env["PREFECT_API_URL"], timeout=30)


def state_of(ascob: Ascob, fr_id: str) -> dict[str, Any]:
    return dict(prefect(ascob).get(f"/flow_runs/{fr_id}").json())


def test_flow_run_is_legible_name_tags_state_names_artifacts(ascob: Ascob) -> None:
    key = f"legible-{time.time_ns()}"
    holder = ascob.submit(
        {
            "description": "dummy holder",
            "submitter": "ops",
            "labels": {**DUMMY, "status": "RUNNING"},
            "locks": [{"key": key}],
        }
    )
    ascob.wait_status(holder, "RUNNING")
    run_id = ascob.submit(
        {
            "description": "restart  service\nX",
            "submitter": "alice",
            "labels": {**DUMMY, "output": "line 1\nall good"},
            "locks": [{"key": key}],
        }
    )
    ascob.wait_status(run_id, "WAITING_LOCKS")
    fr = flow_run_id(ascob, run_id)
    wait_until(
        lambda: state_of(ascob, fr)["state_name"] == "WaitingLocks",
        30,
        "the state name WaitingLocks",
    )
    hfr = state_of(ascob, flow_run_id(ascob, holder))
    assert hfr["state_type"] == "RUNNING" and hfr["state_name"] == "Running"
    ascob.http.delete(f"/api/runs/{holder}")
    ascob.wait_status(run_id, "SUCCEDED")
    info = wait_until(
        lambda: (s := state_of(ascob, fr))["state_type"] == "COMPLETED" and s,
        30,
        "the flow run to complete",
    )
    assert info["name"] == f"ascob-{run_id} restart service X"
    assert {"owner:alice", "backend:dummyBackend"} <= set(info["tags"])
    assert info["state_name"] == "Succeeded"
    # artifacts of this flow run (no keys: installations sharing a Prefect server would collide)
    arts = (
        prefect(ascob)
        .post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [fr]}}})
        .json()
    )
    # one artifact per run: the links, and the end of the output once the run is over
    assert len(arts) == 1, arts
    text = arts[0]["data"]
    assert f"/api/runs/{run_id}" in text and "dummyBackend" in text, text
    assert "all good" in text and "Output of ASCOB run" in text, text
    holder_fr = wait_until(
        lambda: (
            (s := state_of(ascob, flow_run_id(ascob, holder)))["state_type"] == "CANCELLED" and s
        ),
        30,
        "the stopped run's flow run to be Cancelled",
    )
    assert holder_fr["state_name"] == "Aborted"


def test_cancel_in_prefect_stops_the_job_and_releases_locks(ascob: Ascob) -> None:
    key = f"cancel-{time.time_ns()}"
    run_id = ascob.submit(
        {
            "description": "dummy long",
            "labels": {**DUMMY, "status": "RUNNING"},
            "locks": [{"key": key}],
        }
    )
    ascob.wait_status(run_id, "RUNNING")
    follower = ascob.submit({"description": "dummy next", "labels": DUMMY, "locks": [{"key": key}]})
    ascob.wait_status(follower, "WAITING_LOCKS")
    fr = flow_run_id(ascob, run_id)
    # what the UI's Cancel button does
    r = prefect(ascob).post(
        f"/flow_runs/{fr}/set_state", json={"state": {"type": "CANCELLING"}, "force": True}
    )
    assert r.status_code in (200, 201), r.text
    ascob.wait_status(run_id, "ABORTED", timeout=30)
    wait_until(
        lambda: state_of(ascob, fr)["state_type"] == "CANCELLED",
        30,
        "the flow run to end Cancelled",
    )
    ascob.wait_status(follower, "SUCCEDED", timeout=30)


def test_cancel_in_prefect_before_the_run_starts(ascob: Ascob) -> None:
    key = f"cancel-early-{time.time_ns()}"
    holder = ascob.submit(
        {"description": "dummy", "labels": {**DUMMY, "status": "RUNNING"}, "locks": [{"key": key}]}
    )
    ascob.wait_status(holder, "RUNNING")
    waiting = ascob.submit({"description": "dummy", "labels": DUMMY, "locks": [{"key": key}]})
    ascob.wait_status(waiting, "WAITING_LOCKS")
    fr = flow_run_id(ascob, waiting)
    prefect(ascob).post(
        f"/flow_runs/{fr}/set_state", json={"state": {"type": "CANCELLING"}, "force": True}
    )
    ascob.wait_status(waiting, "ABORTED", timeout=30)
    assert ascob.run(holder)["status"] == "RUNNING"
    ascob.http.delete(f"/api/runs/{holder}")
    ascob.wait_status(holder, "ABORTED")


def _run_deployment(ascob: Ascob, job_spec: dict[str, Any]) -> str:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go() -> str:
        with temporary_settings(updates={PREFECT_API_URL: ascob.env["PREFECT_API_URL"]}):
            fr = await run_deployment(
                f"ascob-job/{ascob.env['ASCOB_DEPLOYMENT']}",
                parameters={"job_spec": job_spec},
                timeout=0,
            )
        return str(fr.id)

    return asyncio.run(go())


def _run_of_flow_run(ascob: Ascob, fr: str) -> int:
    def read() -> int | None:
        db = sqlite3.connect(ascob.home / "ascob.db", timeout=30)
        try:
            row = db.execute("select id from runs where flow_run_id = ?", (fr,)).fetchone()
        finally:
            db.close()
        return int(row[0]) if row else None

    return int(wait_until(read, 60, "the deployment's flow run to register an ASCOB run"))


def test_run_deployment_with_a_job_spec_is_an_ascob_run(ascob: Ascob) -> None:
    marker = f"from-prefect-{time.time_ns()}"
    key = f"dep-{time.time_ns()}"
    holder = ascob.submit(
        {"description": "dummy", "labels": {**DUMMY, "status": "RUNNING"}, "locks": [{"key": key}]}
    )
    ascob.wait_status(holder, "RUNNING")
    fr = _run_deployment(
        ascob,
        {
            "description": "dummy from prefect",
            "submitter": marker,
            "labels": DUMMY,
            "locks": [{"key": key}],
        },
    )
    run_id = _run_of_flow_run(ascob, fr)
    ascob.wait_status(run_id, "WAITING_LOCKS")  # honours locks
    found = ascob.http.post("/api/search/runs", json={"submitterFilter": marker}).json()
    assert [i["id"] for i in found["items"]] == [run_id]
    ascob.http.delete(f"/api/runs/{holder}")
    ascob.wait_status(run_id, "SUCCEDED", timeout=30)
    info = wait_until(
        lambda: (s := state_of(ascob, fr))["state_type"] == "COMPLETED" and s,
        30,
        "the deployment's flow run to complete",
    )
    assert info["name"].startswith(f"ascob-{run_id} ")


def test_run_deployment_job_can_be_stopped_from_either_side(ascob: Ascob) -> None:
    spec = {"description": "dummy long from prefect", "labels": {**DUMMY, "status": "RUNNING"}}
    fr = _run_deployment(ascob, spec)
    run_id = _run_of_flow_run(ascob, fr)
    ascob.wait_status(run_id, "RUNNING")
    ascob.http.delete(f"/api/runs/{run_id}")
    ascob.wait_status(run_id, "ABORTED")
    wait_until(lambda: state_of(ascob, fr)["state_type"] == "CANCELLED", 30, "Cancelled")

    fr2 = _run_deployment(ascob, spec)
    run2 = _run_of_flow_run(ascob, fr2)
    ascob.wait_status(run2, "RUNNING")
    prefect(ascob).post(
        f"/flow_runs/{fr2}/set_state", json={"state": {"type": "CANCELLING"}, "force": True}
    )
    ascob.wait_status(run2, "ABORTED", timeout=30)


def test_invalid_job_spec_from_prefect_fails_the_flow_run(ascob: Ascob) -> None:
    fr = _run_deployment(ascob, {"labels": {"_execution_backend_id": "nope"}})
    info = wait_until(
        lambda: (s := state_of(ascob, fr))["state_type"] in ("FAILED", "CRASHED") and s,
        60,
        "the flow run to fail",
    )
    assert info["state_type"] == "FAILED"


def test_flow_run_of_serve_is_created_claimed(ascob: Ascob) -> None:
    """``ascob serve`` creates each flow run already claimed by its own executor (one write on
    the Prefect server instead of a create, a read and a claim): its history starts Pending."""
    run_id = ascob.submit({"description": "dummy", "labels": DUMMY})
    ascob.wait_status(run_id, "SUCCEDED")
    fr = flow_run_id(ascob, run_id)
    # the run is SUCCEDED in ASCOB a moment before its flow run ends in Prefect
    wait_until(
        lambda: state_of(ascob, fr)["state_type"] == "COMPLETED", 30, "the flow run to complete"
    )
    history = prefect(ascob).get("/flow_run_states/", params={"flow_run_id": fr}).json()
    history.sort(key=lambda state: state["timestamp"])
    types = [state["type"] for state in history]
    assert types[0] == "PENDING" and "SCHEDULED" not in types, types
    assert history[0]["message"].startswith("claimed at creation by "), history[0]
    assert types[-2:] == ["RUNNING", "COMPLETED"], types


def test_a_run_that_waits_longer_than_its_max_lock_wait_ends_aborted(ascob: Ascob) -> None:
    """Queue expiry end to end: ABORTED with the message, place released, flow run Cancelled."""
    key = f"expiry-{uuid.uuid4().hex[:6]}"
    holder = ascob.submit(
        {"description": "holder", "labels": {**DUMMY, "status": "RUNNING"}, "locks": [{"key": key}]}
    )
    ascob.wait_status(holder, "RUNNING")
    waiter = ascob.submit(
        {
            "description": "impatient",
            "labels": DUMMY,
            "locks": [{"key": key}],
            "maxLockWaitSeconds": 2,
        }
    )
    ended = ascob.wait_status(waiter, "ABORTED", timeout=60)
    assert ended["endTime"] and ended["submissionTime"] is None
    output = ascob.http.get(f"/api/runs/{waiter}/output.txt").text
    assert f"waited 2 s for locks held by run {holder}" in output
    locks = ascob.http.get("/api/locks").json()["items"]
    assert all(waiter not in lock["waitingRunIds"] for lock in locks)
    fr = flow_run_id(ascob, waiter)
    state = wait_until(
        lambda: (s := state_of(ascob, fr))["state_type"] == "CANCELLED" and s,
        30,
        "the flow run to end Cancelled",
    )
    assert f"waited 2 s for locks held by run {holder}" in state["state"]["message"]
    ascob.http.delete(f"/api/runs/{holder}")
    ascob.wait_status(holder, "ABORTED")
