"""Airflow through ``ascob serve``: configured from ASCOB_CONFIG (an Airflow 3 and an Airflow 2
instance), secrets from the environment, against the fake Airflow on loopback: a DAG run to
SUCCEDED with its logs, a stop to ABORTED, a paused DAG refused, a lost trigger answer that is not
IN_DOUBT, and a kill + restart of the service while a DAG runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_airflow import STOPPED_LINE, FakeAirflow, FakeTask
from tests.harness import Ascob, PrefectServer

LINES = ["extracting", "loading", "done"]


@pytest.fixture(scope="module")
def airflow3() -> Iterator[FakeAirflow]:
    fake = FakeAirflow(api="v2").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def airflow2() -> Iterator[FakeAirflow]:
    fake = FakeAirflow(api="v1").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def app(
    workdir: Path, prefect_server: PrefectServer, airflow3: FakeAirflow, airflow2: FakeAirflow
) -> Iterator[Ascob]:
    config = workdir / f"airflow-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        f"""
[airflow.etl]
url = "{airflow3.url}"
api = "v2"
username = "ascob"
password_env = "E2E_AIRFLOW_PASSWORD"
timeout = 2

[airflow.legacy]
url = "{airflow2.url}"
api = "v1"
username = "ascob"
password_env = "E2E_AIRFLOW_PASSWORD"
"""
    )
    env = {"ASCOB_CONFIG": str(config), "E2E_AIRFLOW_PASSWORD": "airflow-secret"}
    server = Ascob(workdir, prefect_server.api_url, env=env).start()
    yield server
    server.stop()


def dag_spec(fake: FakeAirflow, instance: str = "etl", **dag: Any) -> dict[str, Any]:
    dag_id = f"e2e_{uuid.uuid4().hex[:6]}"
    tasks = dag.pop("tasks", None) or [FakeTask("extract", LINES[:1]), FakeTask("load", LINES[1:])]
    fake.add_dag(dag_id, tasks, **dag)
    return {
        "description": "airflow e2e",
        "submitter": "carol",
        "labels": {"airflow_instance": instance, "airflow_dag_id": dag_id},
        "parameters": {"TABLE": "orders"},
    }


def test_airflow_is_listed_with_its_instances(app: Ascob) -> None:
    found = {b["id"]: b for b in app.http.get("/api/backends").json()}
    assert found["airflowBackend"]["state"] == "loaded"
    assert found["airflowBackend"]["instances"] == ["etl", "legacy"]


@pytest.mark.parametrize("instance", ["etl", "legacy"], ids=["airflow3", "airflow2"])
def test_dag_run_succeeds_with_its_logs(
    app: Ascob, airflow3: FakeAirflow, airflow2: FakeAirflow, instance: str
) -> None:
    fake = airflow3 if instance == "etl" else airflow2
    spec = dag_spec(fake, instance, queue_delay=0.5)
    run_id = app.submit(spec)
    app.wait_status(run_id, "SUCCEDED")
    text = app.http.get(f"/api/runs/{run_id}/output.txt").text
    shown = [line.split(" - ", 1)[-1] for line in text.splitlines()]
    assert shown == [
        "=== extract (try 1) ===",
        "conf TABLE=orders",
        "extracting",
        "=== load (try 1) ===",
        "loading",
        "done",
    ]
    dag_id = spec["labels"]["airflow_dag_id"]
    assert [r.conf for r in fake.runs_of(dag_id)] == [{"TABLE": "orders"}]


def test_abort_stops_the_dag_run(app: Ascob, airflow3: FakeAirflow) -> None:
    spec = dag_spec(airflow3, tasks=[FakeTask("wait", ["waiting"], result="hang")])
    run_id = app.submit(spec)
    app.wait_status(run_id, "RUNNING")
    assert app.http.delete(f"/api/runs/{run_id}").status_code == 200
    app.wait_status(run_id, "ABORTED")
    (run,) = airflow3.runs_of(spec["labels"]["airflow_dag_id"])
    assert run.note == f"Stopped through ASCOB (run {run_id})"
    assert STOPPED_LINE in app.http.get(f"/api/runs/{run_id}/output.txt").text


def test_paused_dag_fails_the_run_with_the_reason(app: Ascob, airflow3: FakeAirflow) -> None:
    spec = dag_spec(airflow3, is_paused=True)
    run_id = app.submit(spec)
    app.wait_status(run_id, "FAILED")
    assert "DAG is paused" in app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert airflow3.runs_of(spec["labels"]["airflow_dag_id"]) == []


def test_a_lost_trigger_answer_is_not_in_doubt(app: Ascob, airflow3: FakeAirflow) -> None:
    spec = dag_spec(airflow3)
    dag_id = spec["labels"]["airflow_dag_id"]
    airflow3.faults.add("POST", rf"/dags/{dag_id}/dagRuns$", "hang", seconds=4)
    run_id = app.submit(spec)
    info = app.wait_status(run_id, "SUCCEDED", "FAILED", "IN_DOUBT")
    assert info["status"] == "SUCCEDED"
    assert len(airflow3.runs_of(dag_id)) == 1


def test_restart_while_a_dag_runs_reattaches(app: Ascob, airflow3: FakeAirflow) -> None:
    lines = [f"chunk {i}" for i in range(30)]
    spec = dag_spec(airflow3, tasks=[FakeTask("long", lines)], line_interval=0.5)
    run_id = app.submit(spec)
    app.wait_status(run_id, "RUNNING")
    app.kill()
    app.restart()
    app.wait_status(run_id, "SUCCEDED", timeout=90)
    assert len(airflow3.runs_of(spec["labels"]["airflow_dag_id"])) == 1
    assert app.http.get(f"/api/runs/{run_id}/output.txt").text.count("chunk 29") == 1
