"""An executor SIGKILLed while its runs wait for locks, are being dispatched and are being polled:
another executor takes them over; nothing is dispatched twice; an unknowable dispatch ends
IN_DOUBT, visibly."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from tests.harness import Ascob, PrefectServer, wait_until

pytestmark = pytest.mark.system


DUMMY = {"_execution_backend_id": "dummyBackend"}


class Installation:
    """One ASCOB installation: an API process and executors sharing home, database, deployment."""

    def __init__(self, workdir: Path, prefect: PrefectServer) -> None:
        self.workdir, self.prefect = workdir, prefect
        self.api = Ascob(workdir, prefect.api_url, command="api")
        self.env = {
            "ASCOB_HOME": str(self.api.home),
            "ASCOB_DEPLOYMENT": self.api.env["ASCOB_DEPLOYMENT"],
            "ASCOB_EXECUTOR_TTL": "6",
            "ASCOB_EXECUTOR_HEARTBEAT": "1",
        }
        self.executors: dict[str, Ascob] = {}

    def executor(self, name: str) -> Ascob:
        proc = Ascob(
            self.workdir,
            self.prefect.api_url,
            command="executor",
            home=self.api.home,
            env={**self.env, "ASCOB_EXECUTOR_ID": name},
        )
        proc.proc.log = self.api.home / f"executor-{name}.log"
        self.executors[name] = proc
        return proc.start()

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.api.home / "ascob.db", timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def stop(self) -> None:
        for proc in self.executors.values():
            proc.stop()
        self.api.stop()


@pytest.fixture
def installation(workdir: Path, prefect_server: PrefectServer) -> Iterator[Installation]:
    inst = Installation(workdir, prefect_server)
    yield inst
    inst.stop()


def test_sigkilled_executor_is_taken_over(installation: Installation) -> None:
    inst = installation
    api = inst.api.start()
    first = inst.executor("exec-a")
    polled = api.submit(
        {
            "description": "dummy polled",
            "locks": [{"key": "db"}],
            "labels": {**DUMMY, "status": "RUNNING"},
        }
    )
    api.wait_status(polled, "RUNNING")
    waiting = api.submit({"description": "dummy waits", "locks": [{"key": "db"}], "labels": DUMMY})
    api.wait_status(waiting, "WAITING_LOCKS")
    in_flight = api.submit(
        {"description": "dummy slow trigger", "labels": {**DUMMY, "submit_delay": "60"}}
    )
    wait_until(
        lambda: inst.rows("select dispatch_started from runs where id = ?", in_flight)[0][0] == 1,
        60,
        "the slow dispatch to start",
    )
    finishing = api.submit({"description": "dummy 15 s", "labels": {**DUMMY, "duration": "15"}})
    api.wait_status(finishing, "RUNNING")
    owners = dict(inst.rows("select id, executor_id from runs"))
    assert {owners[i] for i in (polled, waiting, in_flight, finishing)} == {"exec-a"}
    keys_before = dict(inst.rows("select id, identification_keys from runs"))

    inst.executor("exec-b")
    first.kill()

    api.wait_status(finishing, "SUCCEDED", timeout=90)
    info = api.wait_status(in_flight, "IN_DOUBT", timeout=90)
    assert info["endTime"]
    out = api.http.get(f"/api/runs/{in_flight}/output.txt").text
    assert "may or may not have received the job" in out
    owners = dict(inst.rows("select id, executor_id from runs"))
    assert owners[polled] == owners[waiting] == owners[finishing] == "exec-b"
    keys_after = dict(inst.rows("select id, identification_keys from runs"))
    assert keys_after[polled] == keys_before[polled]  # re-attached, not dispatched again
    assert keys_after[finishing] == keys_before[finishing]
    assert api.run(polled)["status"] == "RUNNING"
    assert api.run(waiting)["status"] == "WAITING_LOCKS"
    assert dict(inst.rows("select key, run_id from lock_holds"))["db"] == polled

    api.http.delete(f"/api/runs/{polled}")
    api.wait_status(polled, "ABORTED", timeout=30)
    api.wait_status(waiting, "SUCCEDED", timeout=30)


def test_restarted_executor_resumes_its_own_runs_at_once(installation: Installation) -> None:
    inst = installation
    api = inst.api.start()
    only = inst.executor("solo")
    run_id = api.submit({"description": "dummy", "labels": {**DUMMY, "status": "RUNNING"}})
    api.wait_status(run_id, "RUNNING")
    only.kill()
    only.restart()
    # the same executor id resumes without waiting for the TTL; the stop proves it is followed
    api.http.delete(f"/api/runs/{run_id}")
    api.wait_status(run_id, "ABORTED", timeout=30)


def test_a_paused_executor_leaves_the_runs_taken_over_to_their_new_owner(
    installation: Installation,
) -> None:
    """Found by the soak: an executor that looked dead (paused past its TTL, or its heartbeat
    stuck behind a lock store without quorum) woke up still running the flows of runs another
    executor had taken over; those flows released the new owner's locks and wrote their flow
    runs' states. It must stop following them without a word to the locks or to Prefect."""
    inst = installation
    api = inst.api.start()
    sleeper = inst.executor("sleeper")
    holder = api.submit(
        {
            "description": "holder",
            "locks": [{"key": "db"}],
            "labels": {**DUMMY, "status": "RUNNING"},
        }
    )
    api.wait_status(holder, "RUNNING")
    waiter = api.submit({"description": "waiter", "locks": [{"key": "db"}], "labels": DUMMY})
    api.wait_status(waiter, "WAITING_LOCKS")
    inst.executor("awake")
    sleeper.proc.signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: {o for _, o in inst.rows("select id, executor_id from runs")} == {"awake"},
            60,
            "the runs to be taken over",
        )
        api.wait_status(holder, "RUNNING", timeout=30)
    finally:
        sleeper.proc.signal(signal.SIGCONT)
    log = inst.api.home / "executor-sleeper.log"
    for run_id in (holder, waiter):
        wait_until(
            lambda r=run_id: f"run {r}: taken over by" in log.read_text(),
            30,
            f"the woken executor to leave run {run_id}",
        )
    assert dict(inst.rows("select key, run_id from lock_holds"))["db"] == holder
    api.http.delete(f"/api/runs/{holder}")
    api.wait_status(holder, "ABORTED", timeout=30)
    api.wait_status(waiter, "SUCCEDED", timeout=60)
    wait_until(lambda: not inst.rows("select key from lock_holds"), 30, "the locks to be free")
    prefect = httpx.Client(base_url=inst.prefect.api_url, timeout=30)
    for run_id, state in ((holder, "CANCELLED"), (waiter, "COMPLETED")):
        flow_run = inst.rows("select flow_run_id from runs where id = ?", run_id)[0][0]
        wait_until(
            lambda f=flow_run, s=state: prefect.get(f"/flow_runs/{f}").json()["state"]["type"] == s,
            30,
            f"run {run_id}'s flow run to end {state}",
        )
    assert "Crash detected" not in log.read_text()


def test_claim_never_recorded_is_taken_over(installation: Installation) -> None:
    """An executor killed between winning a claim (the flow run went Pending) and recording it
    in the repository: after an executor TTL another executor hands the flow run back and runs
    it; without that the run would stay DEFINED forever (only Scheduled flow runs are claimed)."""
    inst = installation
    api = inst.api.start()  # creates flow runs, runs none
    run_id = api.submit({"description": "dummy", "labels": DUMMY})
    flow_run = wait_until(
        lambda: inst.rows("select flow_run_id from runs where id = ?", run_id)[0][0],
        60,
        "the flow run to be created",
    )
    prefect = httpx.Client(base_url=inst.prefect.api_url, timeout=30)
    claimed = prefect.post(
        f"/flow_runs/{flow_run}/set_state", json={"state": {"type": "PENDING"}, "force": False}
    )
    assert claimed.json()["status"] == "ACCEPT", claimed.text
    inst.executor("rescuer")
    api.wait_status(run_id, "SUCCEDED", timeout=90)
    assert inst.rows("select executor_id from runs where id = ?", run_id)[0][0] == "rescuer"
    log = (inst.api.home / "executor-rescuer.log").read_text()
    assert f"run {run_id}: resuming (its claim was never recorded)" in log
    wait_until(
        lambda: prefect.get(f"/flow_runs/{flow_run}").json()["state"]["type"] == "COMPLETED",
        30,
        "the flow run to end Completed",
    )


def test_flow_run_claimed_at_creation_by_a_dead_executor_is_taken_over(
    workdir: Path, prefect_server: PrefectServer
) -> None:
    """An executor's launcher creates flow runs already claimed for itself (Pending, with its
    nonce). One that died before recording the flow run leaves it to the next launcher, whose
    create (same idempotency key) gets that flow run back: it is not this executor's claim, so
    it must not run it at once, and the run must not be lost either: after an executor TTL the
    flow run is handed back and run, once."""
    from types import SimpleNamespace

    from ascob_flows.executor import launch_key

    app = Ascob(
        workdir,
        prefect_server.api_url,
        env={"ASCOB_EXECUTOR_TTL": "4", "ASCOB_EXECUTOR_HEARTBEAT": "1"},
    ).start()
    try:
        run_id = app.submit({"description": "dummy", "labels": DUMMY, "manualStart": True})
        db = sqlite3.connect(app.home / "ascob.db", timeout=30)
        try:
            row = db.execute("select webhook_id from runs where id = ?", (run_id,)).fetchone()
        finally:
            db.close()
        webhook_id = row[0]
        prefect = httpx.Client(base_url=prefect_server.api_url, timeout=30)
        by_name = f"/deployments/name/ascob-job/{app.env['ASCOB_DEPLOYMENT']}"
        # registered by the executor once it is up, maybe after the API answers
        wait_until(lambda: prefect.get(by_name).status_code == 200, 60, "the deployment")
        deployment = prefect.get(by_name)
        # what the dead executor's launcher did before it could record the flow run
        gone = prefect.post(
            f"/deployments/{deployment.json()['id']}/create_flow_run",
            json={
                "parameters": {"run_id": run_id},
                "idempotency_key": launch_key(
                    cast(Any, SimpleNamespace(id=run_id, webhook_id=webhook_id))
                ),
                "state": {"type": "PENDING", "message": "claimed at creation by gone (0123)"},
            },
        )
        assert gone.status_code == 201, gone.text
        assert app.http.get(f"/api/runs/{run_id}/start").status_code == 200
        info = app.wait_status(run_id, "SUCCEDED", timeout=90)
        assert info["status"] == "SUCCEDED"
        log = app.proc.log.read_text()
        assert f"run {run_id}: resuming (its claim was never recorded)" in log, app.proc.tail()
        fr = gone.json()["id"]
        history = prefect.get("/flow_run_states/", params={"flow_run_id": fr}).json()
        history.sort(key=lambda state: state["timestamp"])
        names = [state["name"] for state in history]
        assert names[0] == "Pending" and "Resuming" in names, names
        types = [state["type"] for state in history]
        starts = [i for i in range(1, len(types)) if types[i - 1 : i + 1] == ["PENDING", "RUNNING"]]
        assert len(starts) == 1, names  # the engine started it once
    finally:
        app.stop()


def test_run_that_ended_as_its_executor_died_gets_its_flow_run_settled(
    installation: Installation,
) -> None:
    """Found by the soak: an executor killed after its run ended but before the flow run's final
    state was written left the flow run Running for ever (the run was final, so no reaper took
    it over). The moment is made here: the run's job runs, the executor is killed, and the run
    is given the end it reached (SUCCEDED, the flag that the final step sets)."""
    inst = installation
    api = inst.api.start()
    first = inst.executor("exec-a")
    run_id = api.submit({"description": "dummy ends", "labels": {**DUMMY, "status": "RUNNING"}})
    api.wait_status(run_id, "RUNNING")
    first.kill()
    db = sqlite3.connect(inst.api.home / "ascob.db", timeout=30)
    try:
        with db:
            db.execute(
                "update runs set status = 'SUCCEDED', end_time = submission_time,"
                " flow_unsettled = 1 where id = ?",
                (run_id,),
            )
    finally:
        db.close()
    (flow_run_id,) = inst.rows("select flow_run_id from runs where id = ?", run_id)[0]

    def state() -> str:
        r = httpx.get(f"{inst.prefect.api_url}/flow_runs/{flow_run_id}", timeout=30)
        return str(r.json()["state"]["type"])

    assert state() == "RUNNING"
    inst.executor("exec-b")
    wait_until(lambda: state() == "COMPLETED", 60, "the flow run to be settled")
    assert inst.rows("select flow_unsettled from runs where id = ?", run_id)[0][0] == 0
    assert api.run(run_id)["status"] == "SUCCEDED"
