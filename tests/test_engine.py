"""Locks, crash recovery and the flow's behaviour, end to end through ``ascob serve``."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from tests.harness import WEBHOOK_TOKEN, Ascob, wait_until

DUMMY = {"_execution_backend_id": "dummyBackend"}


def spec(locks: list[str], **labels: str) -> dict[str, Any]:
    return {
        "description": "dummy lock test",
        "submitter": "locker",
        "labels": {**DUMMY, **labels},
        "locks": [{"key": k} for k in locks],
    }


def db_rows(ascob: Ascob, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(ascob.home / "ascob.db", timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def holders(ascob: Ascob) -> dict[str, int]:
    return {k: r for k, r in db_rows(ascob, "select key, run_id from lock_holds")}


def test_a_lock_serialises_runs_and_hands_over_on_release(ascob: Ascob) -> None:
    key = f"svc-{time.time_ns()}"
    first = ascob.submit(spec([key], status="RUNNING"))
    ascob.wait_status(first, "RUNNING")
    second = ascob.submit(spec([key]))
    ascob.wait_status(second, "WAITING_LOCKS")
    time.sleep(1.5)
    waiting = ascob.run(second)
    assert waiting["status"] == "WAITING_LOCKS"
    assert waiting["waitingFor"] == [first]  # an extra field, only while waiting
    assert "waitingFor" not in ascob.run(first)
    assert holders(ascob)[key] == first
    ascob.http.delete(f"/api/runs/{first}")
    ascob.wait_status(first, "ABORTED")
    # woken by the release, not by a 30 s timer
    ascob.wait_status(second, "SUCCEDED", timeout=15)
    wait_until(lambda: key not in holders(ascob), 10, f"{key} released")


def test_all_or_nothing_and_a_waiting_run_holds_nothing(ascob: Ascob) -> None:
    a, b = f"a-{time.time_ns()}", f"b-{time.time_ns()}"
    holder = ascob.submit(spec([a], status="RUNNING"))
    ascob.wait_status(holder, "RUNNING")
    both = ascob.submit(spec([a, b]))
    ascob.wait_status(both, "WAITING_LOCKS")
    time.sleep(1)
    held = holders(ascob)
    assert held.get(a) == holder and b not in held  # waits holding neither
    ascob.http.delete(f"/api/runs/{holder}")
    ascob.wait_status(both, "SUCCEDED", timeout=15)


def test_locks_are_released_at_every_final_state(ascob: Ascob) -> None:
    key = f"final-{time.time_ns()}"
    cases: list[tuple[dict[str, Any], str]] = [
        (spec([key], status="FAILED"), "FAILED"),
        (spec([key], fail="true"), "FAILED"),
        (spec([key], status="ABORTED"), "ABORTED"),
        (spec([key], status="SUCCEEDED", duration="0.5"), "SUCCEDED"),
    ]
    for body, final in cases:
        run_id = ascob.submit(body)
        ascob.wait_status(run_id, final, timeout=30)
        wait_until(lambda: key not in holders(ascob), 10, f"{key} released after {final}")
    # and when a webhook ends the run
    run_id = ascob.submit(spec([key], status="RUNNING"))
    ascob.wait_status(run_id, "RUNNING")
    (hook,) = db_rows(ascob, "select webhook_id from runs where id = ?", run_id)[0]
    import httpx

    httpx.post(
        f"{ascob.url}/api/webhooks/runs/{hook}",
        json={"status": "FAILED"},
        headers={"X-Api-Token": WEBHOOK_TOKEN},
    )
    ascob.wait_status(run_id, "FAILED")
    wait_until(lambda: key not in holders(ascob), 10, "release after the webhook")
    follower = ascob.submit(spec([key]))
    ascob.wait_status(follower, "SUCCEDED", timeout=15)


def test_stop_while_waiting_for_locks_is_aborted_at_once(ascob: Ascob) -> None:
    key = f"wait-{time.time_ns()}"
    holder = ascob.submit(spec([key], status="RUNNING"))
    ascob.wait_status(holder, "RUNNING")
    waiter = ascob.submit(spec([key]))
    ascob.wait_status(waiter, "WAITING_LOCKS")
    r = ascob.http.delete(f"/api/runs/{waiter}")
    assert r.json()["status"] == "ABORTED"
    ascob.http.delete(f"/api/runs/{holder}")
    ascob.wait_status(holder, "ABORTED")
    time.sleep(1)
    assert ascob.run(waiter)["status"] == "ABORTED"
    assert db_rows(ascob, "select count(*) from lock_waiters where run_id = ?", waiter)[0][0] == 0


def test_fencing_token_reaches_the_job(ascob: Ascob) -> None:
    key = f"fence-{time.time_ns()}"
    outputs = []
    for _ in range(2):
        run_id = ascob.submit(spec([key], output="token=%%LOCKTOKEN%%"))
        ascob.wait_status(run_id, "SUCCEDED")
        outputs.append(ascob.http.get(f"/api/runs/{run_id}/output.txt").text)
    first, second = (int(out.removeprefix("token=")) for out in outputs)
    assert 0 < first < second  # fencing tokens increase with every acquisition


def test_sigkill_and_restart_keeps_runs_reattaches_and_locks_stay_exclusive(
    fresh_ascob: Ascob,
) -> None:
    app = fresh_ascob.start()
    key = "cluster-1"
    running = app.submit(spec([key], status="RUNNING"))
    app.wait_status(running, "RUNNING")
    waiting = app.submit(spec([key]))
    app.wait_status(waiting, "WAITING_LOCKS")
    slow = app.submit(spec([], duration="4"))
    app.wait_status(slow, "RUNNING")
    done = app.submit(spec([]))
    app.wait_status(done, "SUCCEDED")
    job_ids = dict(db_rows(app, "select id, identification_keys from runs"))

    app.kill()  # SIGKILL: no cleanup at all
    app.restart()

    assert app.run(done)["status"] == "SUCCEDED"
    app.wait_status(slow, "SUCCEDED", timeout=60)
    # the running job was re-attached, not dispatched again
    after = dict(db_rows(app, "select id, identification_keys from runs"))
    assert after[running] == job_ids[running]
    assert after[slow] == job_ids[slow]
    time.sleep(2)
    assert app.run(running)["status"] == "RUNNING"
    assert app.run(waiting)["status"] == "WAITING_LOCKS"
    assert holders(app)[key] == running
    app.http.delete(f"/api/runs/{running}")
    app.wait_status(running, "ABORTED", timeout=30)
    app.wait_status(waiting, "SUCCEDED", timeout=30)
    assert {r["id"] for r in app.http.post("/api/search/runs", json={}).json()["items"]} == {
        running,
        waiting,
        slow,
        done,
    }


def test_a_job_the_backend_forgot_ends_failed_with_the_reason(ascob: Ascob) -> None:
    run_id = ascob.submit(spec([], lost="true"))
    ascob.wait_status(run_id, "FAILED", timeout=60)
    assert "no longer knows the job" in ascob.http.get(f"/api/runs/{run_id}/output.txt").text
