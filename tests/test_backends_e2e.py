"""Jenkins and Rundeck through ``ascob serve``: configured from ASCOB_CONFIG, secrets from the
environment, against the fake servers on loopback; GET /api/backends; live output."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_jenkins import FakeJenkins
from tests.fakes.fake_rundeck import FakeRundeck
from tests.harness import WEBHOOK_TOKEN, Ascob, PrefectServer

LINES = ["compiling", "testing", "done"]


@pytest.fixture(scope="module")
def jenkins() -> Iterator[FakeJenkins]:
    fake = FakeJenkins().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def rundeck() -> Iterator[FakeRundeck]:
    fake = FakeRundeck().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def app(
    workdir: Path, prefect_server: PrefectServer, jenkins: FakeJenkins, rundeck: FakeRundeck
) -> Iterator[Ascob]:
    config = workdir / f"backends-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        f"""
[jenkins.ci]
url = "{jenkins.url}"
user = "ascob"
token_env = "E2E_JENKINS_TOKEN"
timeout = 2

[jenkins.badcreds]
url = "{jenkins.url}"
user = "ascob"
token_env = "E2E_JENKINS_WRONG"

[rundeck.ops]
url = "{rundeck.url}"
token_env = "E2E_RUNDECK_TOKEN"
api_version = 41
timeout = 2

[rundeck.plain]
url = "{rundeck.url}"
token_env = "E2E_RUNDECK_TOKEN"
timeout = 2
run_option = ""
"""
    )
    env = {
        "ASCOB_CONFIG": str(config),
        "E2E_JENKINS_TOKEN": "jenkins-secret",
        "E2E_JENKINS_WRONG": "not-the-token",
        "E2E_RUNDECK_TOKEN": "rundeck-secret",
        "ASCOB_DISPATCH_RETRY_SECONDS": "10",
    }
    server = Ascob(workdir, prefect_server.api_url, env=env).start()
    yield server
    server.stop()


def jenkins_spec(jenkins: FakeJenkins, instance: str = "ci", **job: Any) -> dict[str, Any]:
    path = f"e2e/job-{uuid.uuid4().hex[:6]}"
    job.setdefault("lines", LINES)
    jenkins.add_job(path, parameters={"ASCOB_RUN": "", "GREETING": ""}, **job)
    return {
        "description": "jenkins e2e",
        "submitter": "alice",
        "labels": {"jenkins_instance": instance, "jenkins_project_name": path},
        "parameters": {"GREETING": "hello"},
    }


def rundeck_spec(rundeck: FakeRundeck, instance: str = "ops", **job: Any) -> dict[str, Any]:
    name = f"job-{uuid.uuid4().hex[:6]}"
    job.setdefault("lines", LINES)
    rundeck.add_job("e2e", name, **job)
    return {
        "description": "rundeck e2e",
        "submitter": "bob",
        "labels": {
            "rundeck_instance": instance,
            "rundeck_project_name": "e2e",
            "rundeck_job_name": name,
        },
        "parameters": {"env": "prod"},
    }


def test_backends_are_listed_with_their_instances(app: Ascob) -> None:
    r = app.http.get("/api/backends")
    assert r.status_code == 200, r.text
    found = {b["id"]: b for b in r.json()}
    assert found["jenkinsBackend"] == {
        "id": "jenkinsBackend",
        "state": "loaded",
        "error": None,
        "instances": ["badcreds", "ci"],
    }
    assert found["rundeckBackend"]["instances"] == ["ops", "plain"]
    assert found["dummyBackend"]["state"] == "loaded"
    refused = app.http.get("/api/backends", headers={"X-Api-Token": WEBHOOK_TOKEN})
    assert refused.status_code in (401, 403)


def test_jenkins_job_runs_to_succeded_with_its_output(app: Ascob, jenkins: FakeJenkins) -> None:
    run_id = app.submit(jenkins_spec(jenkins, queue_delay=0.5))
    app.wait_status(run_id, "SUCCEDED")
    r = app.http.get(f"/api/runs/{run_id}/output.txt")
    assert r.status_code == 200
    assert "GREETING=hello" in r.text and r.text.endswith("done\nFinished: SUCCESS\n")
    assert r.headers["X-Ascob-More"] == "false"
    size = int(r.headers["X-Ascob-Next-Offset"])
    assert size == len(r.text.encode())
    tail = app.http.get(f"/api/runs/{run_id}/output.txt", params={"offset": size - 5})
    assert tail.text == r.text[-5:]


def test_rundeck_job_runs_to_succeded_with_its_output(app: Ascob, rundeck: FakeRundeck) -> None:
    run_id = app.submit(rundeck_spec(rundeck, scheduled_delay=0.3))
    app.wait_status(run_id, "SUCCEDED")
    text = app.http.get(f"/api/runs/{run_id}/output.txt").text
    expected = r"option env=prod\noption ASCOB_RUN=\d+-\w+\ncompiling\ntesting\ndone\n"
    assert re.fullmatch(expected, text), text


def test_rundeck_failure_is_failed(app: Ascob, rundeck: FakeRundeck) -> None:
    run_id = app.submit(rundeck_spec(rundeck, final="timedout"))
    app.wait_status(run_id, "FAILED")


def test_bad_credentials_fail_the_run_with_the_backend_message(
    app: Ascob, jenkins: FakeJenkins
) -> None:
    run_id = app.submit(jenkins_spec(jenkins, instance="badcreds"))
    app.wait_status(run_id, "FAILED")
    output = app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert "401" in output and "Unauthorized" in output


def test_unknown_instance_is_a_400_at_submission(app: Ascob) -> None:
    spec = {"labels": {"jenkins_instance": "nowhere", "jenkins_project_name": "x"}}
    r = app.http.post("/api/runs", json={"jobSpec": spec})
    assert r.status_code == 400
    assert "nowhere" in r.json()["error"]


def test_polling_outlives_a_backend_outage(app: Ascob, jenkins: FakeJenkins) -> None:
    spec = jenkins_spec(jenkins, line_interval=0.3)
    jenkins.faults.add("GET", r"/e2e/job/job-\w+/\d+/api/json$", "500", times=3)
    jenkins.faults.add("GET", r"/e2e/job/job-\w+/\d+/api/json$", "malformed", times=2)
    run_id = app.submit(spec)
    info = app.wait_status(run_id, "SUCCEDED", "FAILED", "IN_DOUBT", timeout=90)
    assert info["status"] == "SUCCEDED"
    jenkins.faults.clear()


def lose_the_answer(rundeck: FakeRundeck, spec: dict[str, Any]) -> None:
    """Rundeck starts the job, but its answer comes after ASCOB's 2 s timeout."""
    job = next(j for j in rundeck.jobs.values() if j.name == spec["labels"]["rundeck_job_name"])
    rundeck.faults.add("POST", rf"/job/{job.id}/run$", "hang", seconds=4)


def test_a_lost_answer_is_found_by_the_run_option(app: Ascob, rundeck: FakeRundeck) -> None:
    spec = rundeck_spec(rundeck)
    lose_the_answer(rundeck, spec)
    run_id = app.submit(spec)
    info = app.wait_status(run_id, "SUCCEDED", "IN_DOUBT", "FAILED")
    assert info["status"] == "SUCCEDED", info
    assert "answer to the submission was lost" in info["message"]
    assert "ASCOB_RUN=" in app.http.get(f"/api/runs/{run_id}/output.txt").text


def test_a_trigger_without_answer_ends_in_doubt(app: Ascob, rundeck: FakeRundeck) -> None:
    """Without a run option (``run_option = ""``) the job carries nothing unique to the run, so
    a lost answer cannot be looked for."""
    spec = rundeck_spec(rundeck, instance="plain")
    lose_the_answer(rundeck, spec)
    run_id = app.submit(spec)
    app.wait_status(run_id, "IN_DOUBT")
    assert "outcome" in app.http.get(f"/api/runs/{run_id}/output.txt").text


def test_a_job_waits_for_its_restarting_backend(app: Ascob, jenkins: FakeJenkins) -> None:
    """Jenkins answers 503 before the trigger (restarting): the job is sent once it answers."""
    spec = jenkins_spec(jenkins)
    name = spec["labels"]["jenkins_project_name"].rsplit("/", 1)[1]
    jenkins.faults.add("GET", rf"/{name}/api/json$", "503", times=2)
    run_id = app.submit(spec)
    info = app.wait_status(run_id, "SUCCEDED", "FAILED", "IN_DOUBT")
    assert info["status"] == "SUCCEDED", info
    log = app.proc.tail(400)
    assert f"run {run_id}: jenkinsBackend is unavailable" in log, log
    assert "the job is sent again in 2 s" in log and "again in 4 s" in log
    assert len(jenkins.triggers_of(spec["labels"]["jenkins_project_name"])) == 1


def test_a_backend_down_for_longer_than_the_retry_fails_the_run(
    app: Ascob, rundeck: FakeRundeck
) -> None:
    spec = rundeck_spec(rundeck)
    rundeck.faults.add("GET", r"/project/e2e/jobs$", "503", times=100)
    try:
        run_id = app.submit(spec)
        info = app.wait_status(run_id, "SUCCEDED", "FAILED", "IN_DOUBT")
    finally:
        rundeck.faults.clear()
    assert info["status"] == "FAILED", info
    assert info["message"].startswith("rundeckBackend refused the job: unavailable for 10 s")
    name = spec["labels"]["rundeck_job_name"]
    assert not [e for e in rundeck.executions.values() if e.job.name == name]


def test_abort_stops_the_jenkins_build(app: Ascob, jenkins: FakeJenkins) -> None:
    run_id = app.submit(jenkins_spec(jenkins, result="HANG"))
    app.wait_status(run_id, "RUNNING")
    assert app.http.delete(f"/api/runs/{run_id}").status_code == 200
    app.wait_status(run_id, "ABORTED")


def read_events(app: Ascob, run_id: int) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    name, data = "message", []
    with app.http.stream(
        "GET", f"/api/runs/{run_id}/events", params={"interval": 0.2}, timeout=60
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line == "" and data:
                events.append((name, "\n".join(data)))
                name, data = "message", []
    return events


def test_events_stream_status_changes_and_output_lines(app: Ascob, rundeck: FakeRundeck) -> None:
    lines = [f"progress {i}%" for i in range(0, 100, 10)]
    run_id = app.submit(rundeck_spec(rundeck, lines=lines, line_interval=0.2))
    events = read_events(app, run_id)
    statuses = [json.loads(d)["status"] for n, d in events if n == "status"]
    assert statuses[-1] == "SUCCEDED"
    assert "RUNNING" in statuses
    output = [d for n, d in events if n == "output"]
    assert output[0] == "option env=prod" and output[1].startswith("option ASCOB_RUN=")
    assert output[2:] == lines
    assert events[-1][0] == "end" and json.loads(events[-1][1])["status"] == "SUCCEDED"
    # live: output arrived while the run was still running, not all at the end
    first_output = next(i for i, (n, _) in enumerate(events) if n == "output")
    succeded = next(i for i, (n, d) in enumerate(events) if n == "status" and "SUCCEDED" in d)
    assert first_output < succeded


def test_events_of_an_unknown_run_are_404(app: Ascob) -> None:
    assert app.http.get("/api/runs/999999/events").status_code == 404
