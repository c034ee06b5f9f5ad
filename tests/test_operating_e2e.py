"""Operating ASCOB (issue 15), end to end: the local Prefect server's UI reads from itself (and
listens on all interfaces when told, as in the container image), a
Prefect server of another installation is never used by accident, a clean stop hands the runs
back quietly, and installations that share a Prefect server and a deployment name never touch
each other's flow runs."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Ascob, PrefectServer, _healthy, free_port, wait_until

pytestmark = pytest.mark.system


DUMMY = {"_execution_backend_id": "dummyBackend"}


def _sql(app: Ascob, query: str, *args: Any) -> Any:
    db = sqlite3.connect(app.home / "ascob.db", timeout=30)
    try:
        return db.execute(query, args).fetchone()
    finally:
        db.close()


def _flow_run_id(app: Ascob, run_id: int) -> str:
    def read() -> str | None:
        row = _sql(app, "select flow_run_id from runs where id = ?", run_id)
        return row[0] if row and row[0] else None

    return str(wait_until(read, 60, f"run {run_id} to have a flow run"))


def _installation(app: Ascob) -> str:
    try:
        return str(_sql(app, "select installation_id from installation")[0])
    except sqlite3.Error:
        return "(none)"


def _create_flow_run(prefect: httpx.Client, deployment_id: str, job_spec: dict[str, Any]) -> str:
    """Start the deployment with a job_spec, as the Prefect UI does (a SQLite-backed Prefect
    server may answer 503 "database is locked" to a write: try again)."""

    def create() -> str | None:
        r = prefect.post(
            f"/deployments/{deployment_id}/create_flow_run",
            json={"parameters": {"job_spec": job_spec}},
        )
        if r.status_code == 503:
            return None
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])

    return str(wait_until(create, 60, "Prefect to create the flow run", interval=1.0))


def _own_prefect(workdir: Path, port: int, **env: str) -> Ascob:
    """``ascob serve`` that starts its own Prefect server on ``port``."""
    app = Ascob(workdir, "", env={"ASCOB_PREFECT_PORT": str(port), **env})
    app.env.pop("PREFECT_API_URL")
    app.proc.env.pop("PREFECT_API_URL")
    return app


def test_local_prefect_server_is_this_installations(workdir: Path) -> None:
    port = free_port()
    prefect_url = f"http://127.0.0.1:{port}"
    app = _own_prefect(workdir, port)
    other = _own_prefect(workdir, port)
    problems: list[str] = []  # each part is checked, so that each one's failure shows
    try:
        app.start(timeout=180)
        # the UI asks /ui-settings where its API is: this server, not Prefect's default port
        ui = httpx.get(f"{prefect_url}/ui-settings", timeout=10).json()
        if ui["api_url"] != f"{prefect_url}/api":
            problems.append(f"the UI reads from {ui['api_url']}")
        # by default the server is for this machine's loopback alone (see the next test)
        if _healthy(f"http://127.0.0.2:{port}/api/health"):
            problems.append("the local Prefect server listens beyond 127.0.0.1 by default")
        # another installation (another ASCOB_HOME) on the same port does not use that server
        other.proc.start()
        assert other.proc.proc is not None
        try:
            rc: int | None = other.proc.proc.wait(120)
        except subprocess.TimeoutExpired:
            rc = None
        said = other.proc.tail()
        if rc in (None, 0):
            problems.append(f"another installation used this one's Prefect server:\n{said}")
        elif "ASCOB_PREFECT_PORT" not in said or f"PREFECT_API_URL={prefect_url}/api" not in said:
            problems.append(f"the refusal does not say what to do:\n{said}")
    finally:
        other.stop()
        app.stop()
    assert not problems, "\n".join(problems)


def test_prefect_ui_listens_on_all_interfaces_when_told(workdir: Path) -> None:
    """The container image's ASCOB_PREFECT_HOST=0.0.0.0: the UI answers on another address than
    127.0.0.1, its pages read from an address a browser can open (not 0.0.0.0), the log says
    which and how to change it, and ASCOB itself still runs its jobs on that server."""
    port = free_port()
    app = _own_prefect(workdir, port, ASCOB_PREFECT_HOST="0.0.0.0")
    # 127.0.0.2 is this machine too, but a server bound to 127.0.0.1 alone refuses it
    elsewhere = f"http://127.0.0.2:{port}"
    problems: list[str] = []
    try:
        app.start(timeout=180)
        if not _healthy(f"{elsewhere}/api/health"):
            problems.append(f"the Prefect server does not answer on {elsewhere}")
        else:
            ui = httpx.get(f"{elsewhere}/ui-settings", timeout=10).json()
            if ui["api_url"] != f"http://localhost:{port}/api":
                problems.append(f"the UI reads from {ui['api_url']}")
        said = app.proc.log.read_text(errors="replace")
        if f"http://localhost:{port}/api" not in said or "ASCOB_PUBLIC_PREFECT_URL" not in said:
            problems.append(f"the log does not say where the UI reads from:\n{app.proc.tail()}")
        run_id = app.submit({"description": "dummy", "labels": DUMMY})
        app.wait_status(run_id, "SUCCEDED", timeout=90)
    finally:
        app.stop()
    assert not problems, "\n".join(problems)


def test_clean_stop_hands_runs_back_quietly(workdir: Path) -> None:
    port = free_port()
    prefect_url = f"http://127.0.0.1:{port}"
    app = _own_prefect(workdir, port)
    try:
        app.start(timeout=180)
        # a clean stop (SIGTERM) with live runs: no crash, the runs resume after the restart
        run_id = app.submit({"description": "long", "labels": {**DUMMY, "duration": "25"}})
        app.wait_status(run_id, "RUNNING", timeout=90)
        fr = _flow_run_id(app, run_id)
        # and a job started from Prefect with a job_spec: resumed, it must not register again
        prefect = httpx.Client(base_url=f"{prefect_url}/api", timeout=30)
        dep = prefect.get(f"/deployments/name/ascob-job/{app.env['ASCOB_DEPLOYMENT']}").json()
        spec = {"description": "from prefect", "labels": {**DUMMY, "duration": "25"}}
        spec_fr = _create_flow_run(prefect, dep["id"], spec)
        spec_run = int(
            wait_until(
                lambda: _sql(app, "select id from runs where flow_run_id = ?", spec_fr),
                60,
                "the job_spec flow run to register",
            )[0]
        )
        app.wait_status(spec_run, "RUNNING", timeout=90)
        time.sleep(2)  # its flow run shows the run and has its artifact
        assert app.proc.proc is not None
        app.proc.proc.send_signal(signal.SIGTERM)
        assert app.proc.proc.wait(120) == 0, app.proc.tail()
        wait_until(lambda: not _healthy(f"{prefect_url}/api/health"), 30, "Prefect to stop")
        said = app.proc.log.read_text(errors="replace")
        assert "Crash detected" not in said, app.proc.tail()
        app.restart()
        app.wait_status(run_id, "SUCCEDED", timeout=120)
        app.wait_status(spec_run, "SUCCEDED", timeout=120)
        assert _sql(app, "select count(*) from runs where flow_run_id = ?", spec_fr)[0] == 1
        prefect = httpx.Client(base_url=f"{prefect_url}/api", timeout=30)
        wait_until(
            lambda: prefect.get(f"/flow_runs/{fr}").json()["state_type"] == "COMPLETED",
            60,
            "the flow run to complete",
        )
        history = prefect.get("/flow_run_states/", params={"flow_run_id": fr}).json()
        names = [(s["type"], s["name"]) for s in history]
        assert ("SCHEDULED", "Resuming") in names, names  # the resume, visible as such
        assert not [n for n in names if n[0] == "CRASHED"], names
        tasks = prefect.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [fr]}}})
        assert not [t for t in tasks.json() if t["state_type"] == "CRASHED"], tasks.json()
        arts = prefect.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [fr]}}}
        ).json()
        assert len(arts) == 1, arts  # one artifact, with the output of the resumed run
        assert "Output of ASCOB run" in arts[0]["data"], arts[0]["data"]
        assert f"/api/runs/{run_id}" in arts[0]["data"], arts[0]["data"]  # links kept
    finally:
        app.stop()


def test_installations_sharing_a_deployment_never_touch_each_others_flow_runs(
    workdir: Path, prefect_server: PrefectServer
) -> None:
    shared = {"ASCOB_DEPLOYMENT": f"shared-{time.time_ns()}"}
    b = Ascob(workdir, prefect_server.api_url, env=shared)
    a = Ascob(workdir, prefect_server.api_url, command="api", env=shared)  # no executor
    prefect = httpx.Client(base_url=prefect_server.api_url, timeout=30)
    try:
        b.start(timeout=180)
        a.start(timeout=180)
        b_run = b.submit({"description": "b holds", "labels": {**DUMMY, "status": "RUNNING"}})
        b.wait_status(b_run, "RUNNING", timeout=90)
        a_run = a.submit({"description": "a waits", "labels": DUMMY})
        assert a_run == b_run  # the same number in both repositories
        a_fr = _flow_run_id(a, a_run)
        problems: list[str] = []  # each part is checked, so that each one's failure shows
        if _installation(a) == _installation(b):
            problems.append(f"both installations are {_installation(a)}")
        info = prefect.get(f"/flow_runs/{a_fr}").json()
        if f"ascob-installation:{_installation(a)}" not in info["tags"]:
            problems.append(f"A's flow run is tagged {info['tags']}")
        # B's executor claims Scheduled flow runs of the deployment every second: never A's
        time.sleep(10)
        if (state := prefect.get(f"/flow_runs/{a_fr}").json()["state_type"]) != "SCHEDULED":
            problems.append(f"A's flow run was claimed by B ({state})")

        # cancelling A's flow run in Prefect does not stop B's run with the same number
        r = prefect.post(
            f"/flow_runs/{a_fr}/set_state", json={"state": {"type": "CANCELLED"}, "force": True}
        )
        assert r.status_code in (200, 201), r.text
        time.sleep(10)
        if (status := b.run(b_run)["status"]) != "RUNNING":
            problems.append(f"cancelling A's flow run stopped B's run ({status})")

        # a job_spec flow run started from Prefect gets the tags of every ASCOB flow run
        dep = prefect.get(f"/deployments/name/ascob-job/{shared['ASCOB_DEPLOYMENT']}").json()
        spec = {"description": "from prefect", "submitter": "alice", "labels": DUMMY}
        fr = _create_flow_run(prefect, dep["id"], spec)
        done = wait_until(
            lambda: (
                (s := prefect.get(f"/flow_runs/{fr}").json())["state_type"] == "COMPLETED" and s
            ),
            90,
            "the job_spec flow run to complete",
        )
        wanted = {"owner:alice", "backend:dummyBackend", f"ascob-installation:{_installation(b)}"}
        if not wanted <= set(done["tags"]):
            problems.append(f"a job_spec flow run is tagged {done['tags']}")
        assert not problems, "\n".join(problems)
    finally:
        a.stop()
        b.stop()
