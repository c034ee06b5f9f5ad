"""A real Apache Airflow 3 (see :mod:`tests.airflow_server`) through a real ``ascob serve``.

Statuses and messages, conf, an exception in the output, retries, mapped tasks, a skipped
branch, more than 100 task instances, an unknown DAG, bad credentials, ``api = "v1"`` against
Airflow 3, a queued dag run, a stop, a ``kill -9`` of ``ascob serve`` with re-attach, and the
output: every run is followed live by offset (``output.txt?offset=N``) and what the follower got
is compared byte for byte with the final ``output.txt``.

Airflow is installed on first use into a cached venv (a minute or two), with its metadata on a
throw-away PostgreSQL; a missing Airflow or PostgreSQL skips these tests locally and fails them
under CI.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.airflow_server import PASSWORD, USERNAME, AirflowServer, require_airflow
from tests.harness import ROOT_TOKEN, Ascob, PrefectServer, wait_until
from tests.postgres_server import require_bindir

NOISE = ("Could not read served logs", "Log message source details", "::group::", "::endgroup::")


@pytest.fixture(scope="module")
def airflow() -> Iterator[AirflowServer]:
    server = AirflowServer(require_airflow(), require_bindir()).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _airflow_stays_up(airflow: AirflowServer) -> Iterator[None]:
    yield
    airflow.assert_alive()


@pytest.fixture(scope="module")
def app(workdir: Path, prefect_server: PrefectServer, airflow: AirflowServer) -> Iterator[Ascob]:
    config = workdir / f"airflow-real-{uuid.uuid4().hex[:6]}.toml"
    common = f'url = "{airflow.url}"\nusername = "{USERNAME}"\ntimeout = 10\n'
    config.write_text(
        f'[airflow.local]\napi = "v2"\n{common}password_env = "REAL_AIRFLOW_PASSWORD"\n\n'
        f'[airflow.wrong]\napi = "v2"\n{common}password_env = "REAL_AIRFLOW_WRONG"\n\n'
        f'[airflow.old]\napi = "v1"\n{common}password_env = "REAL_AIRFLOW_PASSWORD"\n'
    )
    env = {
        "ASCOB_CONFIG": str(config),
        "REAL_AIRFLOW_PASSWORD": PASSWORD,
        "REAL_AIRFLOW_WRONG": "not-the-password",
    }
    server = Ascob(workdir, prefect_server.api_url, env=env).start()
    yield server
    server.stop()


def spec(dag_id: str, instance: str = "local", **parameters: str) -> dict[str, Any]:
    return {
        "description": f"real airflow {dag_id}",
        "submitter": "carol",
        "labels": {"airflow_instance": instance, "airflow_dag_id": dag_id},
        "parameters": parameters,
    }


class Follower(threading.Thread):
    """Reads a run's output by offset, as ``ascob logs -f`` does, until no more comes; keeps the
    bytes it got. ``paused`` stops it reading for a while (while ``ascob serve`` restarts)."""

    def __init__(self, app: Ascob, run_id: int) -> None:
        super().__init__(daemon=True)
        self.app, self.run_id = app, run_id
        self.got = b""
        self.offset = 0
        self.paused = threading.Event()
        self.done = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.paused.is_set():
                time.sleep(0.2)
                continue
            try:
                r = httpx.get(
                    f"{self.app.url}/api/runs/{self.run_id}/output.txt",
                    params={"offset": self.offset},
                    headers={"X-Api-Token": ROOT_TOKEN},
                    timeout=30,
                )
            except httpx.HTTPError:
                time.sleep(0.3)
                continue
            if r.status_code != 200:
                time.sleep(0.3)
                continue
            self.got += r.content
            self.offset = int(r.headers["X-Ascob-Next-Offset"])
            if r.headers["X-Ascob-More"] == "false":
                self.done.set()
                return
            time.sleep(0.3)
        self.error = "the output never ended"
        self.done.set()

    def result(self, timeout: float = 120) -> bytes:
        assert self.done.wait(timeout), f"run {self.run_id}: the follower did not end"
        assert self.error is None, self.error
        return self.got


def _without_ascob_note(data: bytes) -> bytes:
    """The job's own output: ASCOB puts why a run did not succeed above it at offset 0."""
    lines = data.split(b"\n")
    while lines and lines[0].startswith(b"[ascob] "):
        lines.pop(0)
    return b"\n".join(lines)


def final_output(app: Ascob, run_id: int) -> bytes:
    return app.http.get(f"/api/runs/{run_id}/output.txt").content


def assert_follow_matches(app: Ascob, run_id: int, follower: Follower) -> str:
    """The live reader got exactly the final text; that text."""
    got = follower.result()
    final = final_output(app, run_id)
    assert _without_ascob_note(got) == _without_ascob_note(final)
    text = final.decode()
    for noise in NOISE:
        assert noise not in text, f"{noise!r} in the output of run {run_id}"
    return text


def submit_and_follow(app: Ascob, body: dict[str, Any]) -> tuple[int, Follower]:
    run_id = app.submit(body)
    follower = Follower(app, run_id)
    follower.start()
    return run_id, follower


def dag_runs_of(airflow: AirflowServer, dag_id: str, run_id: int) -> list[dict[str, Any]]:
    with airflow.client() as http:
        runs = http.get(f"dags/{dag_id}/dagRuns", params={"limit": 100}).json()["dag_runs"]
    return [r for r in runs if str(r["dag_run_id"]).startswith(f"ascob-{run_id}-")]


def sections(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("=== ")]


# --------------------------------------------------------------------------- the batch


@pytest.fixture(scope="module")
def batch(app: Ascob) -> dict[str, tuple[int, Follower]]:
    """The short DAGs, running side by side in Airflow. They are triggered one after the other
    (each is SUBMITTED before the next is sent), so a failure names the DAG whose trigger did
    not get through."""
    bodies = {
        "success": spec("ascob_success", TABLE="orders"),
        "fail": spec("ascob_fail"),
        "retry": spec("ascob_retry"),
        "mapped": spec("ascob_mapped"),
        "wide": spec("ascob_wide"),
    }
    started: dict[str, tuple[int, Follower]] = {}
    for name, body in bodies.items():
        started[name] = submit_and_follow(app, body)
        app.wait_status(started[name][0], "SUBMITTED", "RUNNING", "SUCCEDED", "FAILED")
    return started


def test_airflow_listens_on_loopback_only(airflow: AirflowServer) -> None:
    found = airflow.listening()
    assert ("127.0.0.1", airflow.port) in {(address, port) for _, address, port in found}
    assert all(address == "127.0.0.1" for _, address, _ in found), found


def test_a_dag_run_succeeds_with_its_conf_and_says_so(
    app: Ascob, airflow: AirflowServer, batch: dict[str, tuple[int, Follower]]
) -> None:
    run_id, follower = batch["success"]
    info = app.wait_status(run_id, "SUCCEDED", "FAILED", timeout=180)
    assert info["status"] == "SUCCEDED"
    (dag_run,) = dag_runs_of(airflow, "ascob_success", run_id)
    assert dag_run["conf"] == {"TABLE": "orders"}
    assert info["message"] == f"dag run {dag_run['dag_run_id']} succeeded"
    text = assert_follow_matches(app, run_id, follower)
    shown = [line.split(" - ", 1)[-1] for line in text.splitlines()]
    assert sections(text) == ["=== extract (try 1) ===", "=== load (try 1) ==="]
    for line in ("conf TABLE=orders", "extracting", "loading", "done"):
        assert line in shown
    assert "/logs/dag_id=" not in text


def test_a_failed_task_shows_its_exception(
    app: Ascob, batch: dict[str, tuple[int, Follower]]
) -> None:
    run_id, follower = batch["fail"]
    info = app.wait_status(run_id, "SUCCEDED", "FAILED", timeout=180)
    assert info["status"] == "FAILED"
    assert "failed tasks: bash_exit, explode" in info["message"]
    text = assert_follow_matches(app, run_id, follower)
    assert "RuntimeError: the table orders is missing" in text
    assert "AirflowException: Bash command failed" in text and "exit code 3" in text
    assert "Traceback (most recent call last):" in text
    # the task downstream of the failure never ran (try 0): no section
    assert sorted(sections(text)) == ["=== bash_exit (try 1) ===", "=== explode (try 1) ==="]


def test_a_retried_task_shows_both_tries(
    app: Ascob, batch: dict[str, tuple[int, Follower]]
) -> None:
    run_id, follower = batch["retry"]
    assert app.wait_status(run_id, "SUCCEDED", "FAILED", timeout=180)["status"] == "SUCCEDED"
    text = assert_follow_matches(app, run_id, follower)
    assert sections(text) == ["=== flaky (try 1) ===", "=== flaky (try 2) ==="]
    first, second = text.split("=== flaky (try 2) ===")
    assert "ValueError: first try fails on purpose" in first and "try 1" in first
    assert "second try works" in second


def test_mapped_tasks_and_a_skipped_branch(
    app: Ascob, batch: dict[str, tuple[int, Follower]]
) -> None:
    run_id, follower = batch["mapped"]
    assert app.wait_status(run_id, "SUCCEDED", "FAILED", timeout=180)["status"] == "SUCCEDED"
    text = assert_follow_matches(app, run_id, follower)
    found = sections(text)
    for i in range(3):
        assert f"=== square[{i}] (try 1) ===" in found
    assert "=== taken (try 1) ===" in found and "branch taken" in text
    assert not any("not_taken" in s for s in found)  # skipped: try 0, no section
    assert {f"square {x} = {x * x}" for x in (1, 2, 3)} <= {
        line.split(" - ", 1)[-1] for line in text.splitlines()
    }


def test_more_than_a_hundred_empty_tasks(
    app: Ascob, airflow: AirflowServer, batch: dict[str, tuple[int, Follower]]
) -> None:
    run_id, follower = batch["wide"]
    assert app.wait_status(run_id, "SUCCEDED", "FAILED", timeout=180)["status"] == "SUCCEDED"
    (dag_run,) = dag_runs_of(airflow, "ascob_wide", run_id)
    with airflow.client() as http:
        page = http.get(f"dags/ascob_wide/dagRuns/{dag_run['dag_run_id']}/taskInstances").json()
    assert page["total_entries"] == 104  # over one page of 100
    text = assert_follow_matches(app, run_id, follower)
    assert sections(text) == []  # EmptyOperator runs no process: nothing to show
    # and ASCOB asked for none of their logs (the api-server's own access log says so)
    access = airflow.procs["api-server"].log.read_text().splitlines()
    prefix = f"/dagRuns/{dag_run['dag_run_id']}/taskInstances/"
    assert not [line for line in access if prefix in line and "/logs/" in line]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("instance", "dag_id", "expected"),
    [
        ("local", "no_such_dag", "404"),
        ("wrong", "ascob_success", "401"),
        ("old", "ascob_success", "api/v1 has been removed in Airflow 3"),
    ],
    ids=["unknown-dag", "bad-credentials", "api-v1"],
)
def test_refusals_say_why(
    app: Ascob, airflow: AirflowServer, instance: str, dag_id: str, expected: str
) -> None:
    run_id = app.submit(spec(dag_id, instance))
    info = app.wait_status(run_id, "FAILED", timeout=60)
    assert expected in info["message"]
    if instance == "old":
        assert 'set api = "v2" in [airflow.old]' in info["message"]
    if instance == "wrong":
        assert "Invalid credentials" in info["message"]
    if dag_id != "no_such_dag":
        assert dag_runs_of(airflow, dag_id, run_id) == []


# --------------------------------------------------------------------------- long runs


def test_a_queued_run_says_why_and_a_stop_keeps_the_last_lines(
    app: Ascob, airflow: AirflowServer
) -> None:
    """ascob_long allows one active run: the second waits in Airflow's queue, and says so. The
    first is stopped while it prints: its process logs on until Airflow kills it, and the
    output keeps those lines; the follower got the same bytes."""
    first, follower = submit_and_follow(app, spec("ascob_long", SECONDS="120"))
    app.wait_status(first, "RUNNING", timeout=120)
    second = app.submit(spec("ascob_long", SECONDS="5"))
    info = wait_until(
        lambda: (i := app.run(second))["message"] and "queued" in i["message"] and i,
        60,
        "the queued run's message",
    )
    assert info["status"] == "SUBMITTED"
    assert "allows 1 active run(s) at once (max_active_runs) and 1 running" in info["message"]
    wait_until(lambda: b"tick 3" in final_output(app, first), 60, "tick 3")
    assert app.http.delete(f"/api/runs/{first}").status_code == 200
    stopping = wait_until(
        lambda: (i := app.run(first))["status"] in ("ABORTING", "ABORTED") and i, 30, "ABORTING"
    )
    info = app.wait_status(first, "ABORTED", timeout=90)
    text = assert_follow_matches(app, first, follower)
    assert "Terminating process" in text and text.rstrip().endswith("Task killed!")
    killed_after = text.split("Terminating process", 1)[1]
    assert "tick" in killed_after, "the lines the task printed while being stopped are kept"
    assert stopping["status"] == "ABORTING"
    assert info["message"].startswith("Stopped through ASCOB")
    # the second one runs once the first is over
    assert app.wait_status(second, "SUCCEDED", timeout=120)["status"] == "SUCCEDED"


def test_kill_9_of_ascob_serve_reattaches_to_the_same_dag_run(
    app: Ascob, airflow: AirflowServer
) -> None:
    run_id, follower = submit_and_follow(app, spec("ascob_long", SECONDS="20"))
    app.wait_status(run_id, "RUNNING", timeout=120)
    wait_until(lambda: follower.offset > 0, 60, "some output")
    follower.paused.set()
    app.kill()
    app.restart()
    follower.paused.clear()
    assert app.wait_status(run_id, "SUCCEDED", "FAILED", timeout=180)["status"] == "SUCCEDED"
    assert len(dag_runs_of(airflow, "ascob_long", run_id)) == 1
    text = assert_follow_matches(app, run_id, follower)
    shown = [line.split(" - ", 1)[-1] for line in text.splitlines()]
    assert [line for line in shown if line.startswith("tick ")] == [f"tick {i}" for i in range(20)]
