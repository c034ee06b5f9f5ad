"""``httpBackend`` through ``ascob serve``: an instance described in ASCOB_CONFIG (its token from
the environment) against the home-grown job service on loopback. A job that succeeds with its
output in output.txt, jobs stopped with DELETE (clean and forced), template and refusal errors,
a lost start answer without idempotency key (IN_DOUBT, one job), and a kill -9 + restart of
``ascob serve`` while a job runs (re-attached: SUCCEDED, one job at the service)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_http_service import FakeHttpService
from tests.harness import Ascob, PrefectServer, wait_until

TOKEN = "e2e-service-secret"


@pytest.fixture(scope="module")
def service() -> Iterator[FakeHttpService]:
    fake = FakeHttpService(token=TOKEN).start()
    yield fake
    fake.stop()


def instance(url: str, name: str, idempotent: bool = True, extra_body: str = "") -> str:
    key = 'idempotency_header = "Idempotency-Key"' if idempotent else ""
    return f"""
[http.{name}]
timeout = 2
secret_env = ["E2E_SERVICE_TOKEN"]
headers = {{ Authorization = "Bearer {{env.E2E_SERVICE_TOKEN}}" }}

[http.{name}.start]
url = "{url}/jobs"
body = '''{{"task": "{{param.TASK}}", "ref": "{{run_id}}",
          "params": {{"ENV": "{{param.ENV}}"{extra_body}}}}}'''
accept = [201]
job_id = "job.id"
{key}
retry_pause = 0.2

[http.{name}.status]
url = "{url}/jobs/{{job_id}}"
path = "job.status"
message_path = "job.error"

[http.{name}.status.map]
waiting = "queued"
working = "running"
ok = "succeeded"
error = "failed"
cancelled = "aborted"
killed = "aborted"

[http.{name}.output]
url = "{url}/jobs/{{job_id}}/log?offset={{offset}}"

[http.{name}.stop]
url = "{url}/jobs/{{job_id}}/cancel"

[http.{name}.force_stop]
url = "{url}/jobs/{{job_id}}/cancel?force=1"
"""


def write_config(workdir: Path, service: FakeHttpService) -> dict[str, str]:
    config = workdir / f"http-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        instance(service.url, "jobs")
        + instance(service.url, "plain", idempotent=False)
        + instance(service.url, "broken", extra_body=', "x": "{nope}"')
    )
    return {"ASCOB_CONFIG": str(config), "E2E_SERVICE_TOKEN": TOKEN}


@pytest.fixture(scope="module")
def app(workdir: Path, prefect_server: PrefectServer, service: FakeHttpService) -> Iterator[Ascob]:
    server = Ascob(workdir, prefect_server.api_url, env=write_config(workdir, service)).start()
    yield server
    server.stop()


def task(service: FakeHttpService, **kwargs: Any) -> str:
    name = f"task-{uuid.uuid4().hex[:6]}"
    kwargs.setdefault("lines", ["compiling", "testing", "done"])
    service.add_task(name, **kwargs)
    return name


def spec(name: str, instance_name: str = "jobs", **parameters: str) -> dict[str, Any]:
    return {
        "description": "http e2e",
        "submitter": "dave",
        "labels": {"http_instance": instance_name},
        "parameters": {"TASK": name, "ENV": "staging", **parameters},
    }


def test_backend_is_listed_with_its_instances(app: Ascob) -> None:
    found = {b["id"]: b for b in app.http.get("/api/backends").json()}
    assert found["httpBackend"]["state"] == "loaded"
    assert found["httpBackend"]["instances"] == ["broken", "jobs", "plain"]


def test_job_runs_to_succeded_with_its_output(app: Ascob, service: FakeHttpService) -> None:
    name = task(service, queue_delay=0.5)
    run_id = app.submit(spec(name))
    app.wait_status(run_id, "SUCCEDED")
    r = app.http.get(f"/api/runs/{run_id}/output.txt")
    assert r.status_code == 200
    assert r.text == "ENV=staging\ncompiling\ntesting\ndone\n"
    assert r.headers["X-Ascob-More"] == "false"
    (made,) = service.jobs_of(name)
    assert made.ref == str(run_id) and made.params == {"ENV": "staging"}


def test_failing_job_fails_with_the_service_message(app: Ascob, service: FakeHttpService) -> None:
    run_id = app.submit(spec(task(service, final="error")))
    app.wait_status(run_id, "FAILED")
    assert "step 2 exited with 3" in app.http.get(f"/api/runs/{run_id}/output.txt").text


@pytest.mark.parametrize(("force", "sent"), [(False, "cancel"), (True, "force")])
def test_delete_stops_the_job(app: Ascob, service: FakeHttpService, force: bool, sent: str) -> None:
    name = task(service, final="HANG", stubborn=force)  # a stubborn job yields only to force
    run_id = app.submit(spec(name))
    app.wait_status(run_id, "RUNNING")
    r = app.http.delete(f"/api/runs/{run_id}", params={"force": str(force).lower()})
    assert r.status_code == 200
    app.wait_status(run_id, "ABORTED")
    (made,) = service.jobs_of(name)
    assert made.cancel_requests == [sent]


def test_a_template_with_an_unknown_variable_is_a_400(app: Ascob) -> None:
    r = app.http.post("/api/runs", json={"jobSpec": spec("x", "broken")})
    assert r.status_code == 400
    assert "{nope}" in r.json()["error"] and "unknown variable" in r.json()["error"]


def test_a_missing_parameter_fails_the_run(app: Ascob, service: FakeHttpService) -> None:
    name = task(service)
    run_id = app.submit({"labels": {"http_instance": "jobs"}, "parameters": {"TASK": name}})
    app.wait_status(run_id, "FAILED")
    assert "{param.ENV}" in app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert service.jobs_of(name) == []


def test_an_unknown_task_fails_the_run_with_the_service_answer(app: Ascob) -> None:
    run_id = app.submit(spec("no-such-task"))
    app.wait_status(run_id, "FAILED")
    output = app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert "HTTP 422" in output and "unknown task 'no-such-task'" in output


def test_a_lost_answer_is_retried_with_its_key(app: Ascob, service: FakeHttpService) -> None:
    name = task(service)
    service.faults.add("POST", r"^/jobs$", "hang", seconds=4)
    run_id = app.submit(spec(name))
    app.wait_status(run_id, "SUCCEDED")
    assert len(service.jobs_of(name)) == 1


def test_a_lost_answer_without_key_ends_in_doubt(app: Ascob, service: FakeHttpService) -> None:
    name = task(service)
    service.faults.add("POST", r"^/jobs$", "hang", seconds=4)
    run_id = app.submit(spec(name, "plain"))
    app.wait_status(run_id, "IN_DOUBT")
    assert "outcome unknown" in app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert len(service.jobs_of(name)) == 1  # the service did start it once; never sent again


def test_kill_and_restart_mid_job_reattaches(
    workdir: Path, prefect_server: PrefectServer, service: FakeHttpService
) -> None:
    name = task(service, lines=[f"step {i}" for i in range(30)], line_interval=0.4)
    server = Ascob(workdir, prefect_server.api_url, env=write_config(workdir, service)).start()
    try:
        run_id = server.submit(spec(name))
        server.wait_status(run_id, "RUNNING")
        before = server.http.get(f"/api/runs/{run_id}/output.txt")
        assert before.headers["X-Ascob-More"] == "true"  # still running when killed
        server.kill()
        server.restart()
        info = server.wait_status(run_id, "SUCCEDED", "FAILED", "IN_DOUBT", timeout=120)
        assert info["status"] == "SUCCEDED"
        assert len(service.jobs_of(name)) == 1  # re-attached, not started again
        text = wait_until(
            lambda: server.http.get(f"/api/runs/{run_id}/output.txt").text, 10, "the output"
        )
        assert text.endswith("step 29\n")
    finally:
        server.stop()
