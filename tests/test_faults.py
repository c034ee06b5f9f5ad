"""Faults the soak (bench/soak, docs/reliability.md) found, each reproduced small.

1. The Prefect server dies while runs are in flight and comes back: runs that ended meanwhile
   must not leave their flow runs Running for ever (the engine could not write the final state
   and gave up), and a run that got its locks meanwhile must not stop half-way (its task's state
   could not be written, the engine gave up, and nobody carried the run on).
2. PostgreSQL dies under a running service: the API answered 500 "internal error" with a
   traceback in the log for every call; it is a 503 with Retry-After that a portal retries, and
   the service carries on once the database is back.
"""

from __future__ import annotations

import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Ascob, PrefectServer, Proc, wait_until
from tests.postgres_server import PostgresServer, require_bindir

pytestmark = pytest.mark.system


DUMMY = {"_execution_backend_id": "dummyBackend"}


def flow_run_state(prefect: PrefectServer, flow_run_id: str) -> str | None:
    try:
        r = httpx.get(f"{prefect.api_url}/flow_runs/{flow_run_id}", timeout=10)
    except httpx.HTTPError:
        return None
    return str(r.json()["state"]["type"]) if r.status_code == 200 else None


def test_prefect_server_restart_with_runs_in_flight(workdir: Path) -> None:
    prefect = PrefectServer(workdir).start()
    app = Ascob(workdir, prefect.api_url, env={"ASCOB_EXECUTOR_TTL": "6"})
    try:
        app.start()
        key = f"faults-{uuid.uuid4().hex[:6]}"

        def spec(duration: str, locked: bool) -> dict[str, Any]:
            return {
                "description": "prefect restart",
                "labels": {**DUMMY, "duration": duration},
                "locks": [{"key": key}] if locked else [],
            }

        first = app.submit(spec("8", True))  # ends while Prefect is down
        free = app.submit(spec("8", False))
        app.wait_status(first, "RUNNING", timeout=120)
        waiting = app.submit(spec("1", True))  # takes the lock while Prefect is down
        app.wait_status(waiting, "WAITING_LOCKS", timeout=120)
        app.wait_status(free, "RUNNING", timeout=120)

        prefect.proc.signal(signal.SIGKILL)
        assert prefect.proc.proc is not None
        prefect.proc.proc.wait(10)
        time.sleep(15)
        prefect.proc = Proc(prefect.proc.args, prefect.proc.env, prefect.log)
        prefect.start()

        runs = [first, waiting, free]
        for run_id in runs:
            info = app.wait_status(run_id, "SUCCEDED", "FAILED", "ABORTED", "IN_DOUBT", timeout=180)
            assert info["status"] == "SUCCEDED", (run_id, info, app.proc.tail(60))

        db = sqlite3.connect(app.home / "ascob.db", timeout=30)
        try:
            flow_runs = dict(
                db.execute(
                    f"select id, flow_run_id from runs where id in ({','.join('?' * len(runs))})",
                    runs,
                ).fetchall()
            )
        finally:
            db.close()
        try:
            wait_until(
                lambda: all(flow_run_state(prefect, flow_runs[r]) == "COMPLETED" for r in runs),
                120,
                "every flow run to end Completed",
                interval=1.0,
            )
        except AssertionError as exc:
            states = {r: flow_run_state(prefect, flow_runs[r]) for r in runs}
            raise AssertionError(f"{exc}: {states}\n{app.proc.tail(80)}") from None
    finally:
        app.stop()
        prefect.stop()


def test_postgres_restart_answers_503_then_recovers(
    workdir: Path, prefect_server: PrefectServer
) -> None:
    postgres = PostgresServer(require_bindir()).start()
    app = Ascob(workdir, prefect_server.api_url, env={"ASCOB_DATABASE_URL": postgres.url})
    try:
        app.start()
        before = app.submit({"description": "before", "labels": DUMMY})
        app.wait_status(before, "SUCCEDED", timeout=120)

        postgres.kill()
        down = app.http.get(f"/api/runs/{before}")
        assert down.status_code == 503, down.text
        assert down.headers["Retry-After"] == "2"
        assert "database" in down.json()["error"]
        refused = app.http.post("/api/runs", json={"jobSpec": {"labels": DUMMY}})
        assert refused.status_code == 503, refused.text
        assert "Traceback" not in app.proc.tail(40)

        postgres.restart()
        after = app.submit({"description": "after", "labels": DUMMY})
        assert app.wait_status(after, "SUCCEDED", timeout=120)["status"] == "SUCCEDED"
        assert app.run(before)["status"] == "SUCCEDED"
    finally:
        app.stop()
        postgres.stop()
