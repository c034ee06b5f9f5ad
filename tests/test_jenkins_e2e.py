"""Jenkins jobs as they are (no ``ASCOB_RUN`` parameter, or no parameters at all) through a real
``ascob serve`` configured from ASCOB_CONFIG, against the fake Jenkins on loopback.

Run under the machine-wide lock: ``flock /tmp/ascob-heavy.lock pytest tests/test_jenkins_e2e.py``.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.fake_jenkins import FakeJenkins, JenkinsJob
from tests.harness import Ascob, PrefectServer, wait_until

LINES = ["compiling", "testing", "done"]


@pytest.fixture(scope="module")
def jenkins() -> Iterator[FakeJenkins]:
    fake = FakeJenkins().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def app(workdir: Path, prefect_server: PrefectServer, jenkins: FakeJenkins) -> Iterator[Ascob]:
    config = workdir / f"jenkins-as-is-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        f"""
[jenkins.ci]
url = "{jenkins.url}"
user = "ascob"
token_env = "E2E_JENKINS_AS_IS_TOKEN"
timeout = 2
"""
    )
    env = {"ASCOB_CONFIG": str(config), "E2E_JENKINS_AS_IS_TOKEN": "jenkins-secret"}
    server = Ascob(workdir, prefect_server.api_url, env=env).start()
    yield server
    server.stop()


def add_job(jenkins: FakeJenkins, parameters: dict[str, str], **job: Any) -> JenkinsJob:
    job.setdefault("lines", LINES)
    return jenkins.add_job(f"portal/job-{uuid.uuid4().hex[:6]}", parameters=parameters, **job)


def spec(job: JenkinsJob, parameters: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "description": "a job as it is",
        "submitter": "alice",
        "labels": {"jenkins_project_name": job.path},  # one instance: jenkins_instance left out
        "parameters": parameters or {},
    }


def output(app: Ascob, run_id: int) -> str:
    r = app.http.get(f"/api/runs/{run_id}/output.txt")
    assert r.status_code == 200, r.text
    return r.text


def test_a_job_without_the_run_parameter_succeeds_with_its_output(
    app: Ascob, jenkins: FakeJenkins
) -> None:
    job = add_job(jenkins, {"GREETING": "none"}, queue_delay=0.5)
    run_id = app.submit(spec(job, {"GREETING": "hello"}))
    app.wait_status(run_id, "SUCCEDED")
    text = output(app, run_id)
    assert "GREETING=hello" in text and text.endswith("done\nFinished: SUCCESS\n")
    assert "ASCOB_RUN" not in text
    assert [b.params for b in jenkins.builds[job.path]] == [{"GREETING": "hello"}]


def test_a_job_without_parameters_succeeds_and_refuses_parameters(
    app: Ascob, jenkins: FakeJenkins
) -> None:
    job = add_job(jenkins, {})
    run_id = app.submit(spec(job))
    app.wait_status(run_id, "SUCCEDED")
    assert output(app, run_id).endswith("done\nFinished: SUCCESS\n")
    refused = app.submit(spec(job, {"GREETING": "hello"}))
    app.wait_status(refused, "FAILED")
    assert "takes no parameters" in output(app, refused)
    assert len(jenkins.builds[job.path]) == 1 and len(jenkins.triggers_of(job.path)) == 1


def test_identical_runs_get_their_own_builds(app: Ascob, jenkins: FakeJenkins) -> None:
    # the first item is held in the queue until both runs have triggered, so Jenkins merges
    job = add_job(jenkins, {"GREETING": "none"}, queue_delay=600)
    runs = [app.submit(spec(job, {"GREETING": "same"})) for _ in range(2)]
    wait_until(lambda: len(jenkins.triggers_of(job.path)) >= 2, 90, "both runs to trigger")
    first, merged = jenkins.triggers_of(job.path)[:2]
    assert merged.merged and merged.item_id == first.item_id  # Jenkins answered the same item
    job.queue_delay = 0.3  # the item leaves the queue; the merged run triggers again
    for run_id in runs:
        assert app.wait_status(run_id, "SUCCEDED", "FAILED", timeout=90)["status"] == "SUCCEDED"
    triggers = jenkins.triggers_of(job.path)
    assert len(triggers) == 3 and not triggers[2].merged
    left_at = jenkins.item(first.item_id).left_at
    assert left_at is not None and triggers[2].at >= left_at
    assert len(jenkins.builds[job.path]) == 2
    messages = [app.run(run_id)["message"] or "" for run_id in runs]
    noted = [m for m in messages if "own build:" in m]  # RunInfo.message says it
    assert len(noted) == 1 and f"queue item {first.item_id}" in noted[0], messages
    assert "triggered again" in noted[0]
    assert f"merged the trigger into queue item {first.item_id}" in app.proc.tail(400)


def test_a_lost_trigger_answer_ends_in_doubt_with_one_build(
    app: Ascob, jenkins: FakeJenkins
) -> None:
    job = add_job(jenkins, {"GREETING": "none"})
    name = job.path.rsplit("/", 1)[1]
    jenkins.faults.add("POST", rf"/{name}/buildWithParameters$", "hang", seconds=4)
    run_id = app.submit(spec(job, {"GREETING": "hello"}))
    app.wait_status(run_id, "IN_DOUBT")
    assert "outcome" in output(app, run_id)
    time.sleep(4)  # the late answer, then any request lets the fake's queue move
    httpx.get(f"{jenkins.url}/queue/api/json", auth=("ascob", "jenkins-secret"))
    assert len(jenkins.triggers_of(job.path)) == 1 and len(jenkins.builds[job.path]) == 1


def test_a_lost_trigger_answer_with_the_run_parameter_is_found(
    app: Ascob, jenkins: FakeJenkins
) -> None:
    """Found by the soak: the build carries the run's unique ASCOB_RUN value, so a lost answer
    is looked for instead of ending the run IN_DOUBT."""
    job = add_job(jenkins, {"ASCOB_RUN": "", "GREETING": "none"})
    name = job.path.rsplit("/", 1)[1]
    jenkins.faults.add("POST", rf"/{name}/buildWithParameters$", "hang", seconds=4)
    run_id = app.submit(spec(job, {"GREETING": "hello"}))
    info = app.wait_status(run_id, "SUCCEDED", "IN_DOUBT", "FAILED", timeout=120)
    assert info["status"] == "SUCCEDED", info
    assert f"run {run_id}: the backend's answer to the submission was lost" in app.proc.tail(400)
    assert len(jenkins.triggers_of(job.path)) == 1 and len(jenkins.builds[job.path]) == 1


def test_a_restarted_ascob_reattaches_to_the_build(app: Ascob, jenkins: FakeJenkins) -> None:
    job = add_job(jenkins, {}, lines=[f"line {i}" for i in range(40)], line_interval=0.5)
    run_id = app.submit(spec(job))
    app.wait_status(run_id, "RUNNING")
    app.kill()
    jenkins.forget_after = 0.0  # Jenkins forgets the queue item: found again by its queueId
    try:
        app.restart()
        app.wait_status(run_id, "SUCCEDED", timeout=120)
    finally:
        jenkins.forget_after = 300.0
    assert output(app, run_id).endswith("line 39\nFinished: SUCCESS\n")
    assert len(jenkins.triggers_of(job.path)) == 1 and len(jenkins.builds[job.path]) == 1


def test_a_cancel_in_prefect_that_the_job_ignores_leaves_the_flow_run_completed(
    app: Ascob, jenkins: FakeJenkins, prefect_server: PrefectServer
) -> None:
    """Found by the soak: Prefect turns Cancelling into Cancelled at once for a flow run with no
    infrastructure, so a run whose job ended anyway (SUCCEDED) kept a Cancelled flow run."""
    job = add_job(jenkins, {"ASCOB_RUN": ""}, lines=[f"l{i}" for i in range(8)], line_interval=0.5)
    job.stubborn = True  # ignores the stop: the build ends SUCCESS
    run_id = app.submit(spec(job))
    app.wait_status(run_id, "RUNNING", timeout=120)
    with sqlite3.connect(app.home / "ascob.db", timeout=30) as db:
        (flow_run_id,) = db.execute(
            "select flow_run_id from runs where id = ?", (run_id,)
        ).fetchone()
    r = httpx.post(
        f"{prefect_server.api_url}/flow_runs/{flow_run_id}/set_state",
        json={"state": {"type": "CANCELLING", "name": "Cancelling"}},
        timeout=30,
    )
    assert r.status_code < 300, r.text
    assert app.wait_status(run_id, "SUCCEDED", "ABORTED", timeout=120)["status"] == "SUCCEDED"

    def state() -> str:
        got = httpx.get(f"{prefect_server.api_url}/flow_runs/{flow_run_id}", timeout=30)
        return str(got.json()["state"]["type"])

    try:
        wait_until(lambda: state() == "COMPLETED", 60, "the flow run to end Completed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {state()}\n{app.proc.tail(60)}") from None
