"""AWX through ``ascob serve``: configured from ASCOB_CONFIG, the token from the environment,
against the fake AWX on loopback: a job to the end with its output, a stopped job, refusals that
fail the run with AWX's words, a lost launch answer, and a restart of ASCOB while a job runs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_awx import FakeAwx, Template
from tests.harness import Ascob, PrefectServer, wait_until

LINES = ["TASK [compile]", "TASK [test]", "TASK [done]"]


@pytest.fixture(scope="module")
def awx() -> Iterator[FakeAwx]:
    fake = FakeAwx().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def env(workdir: Path, awx: FakeAwx) -> dict[str, str]:
    config = workdir / f"awx-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        f"""
[awx.prod]
url = "{awx.url}"
token_env = "E2E_AWX_TOKEN"
timeout = 2

[awx.badcreds]
url = "{awx.url}"
token_env = "E2E_AWX_WRONG"
"""
    )
    return {
        "ASCOB_CONFIG": str(config),
        "E2E_AWX_TOKEN": "awx-secret",
        "E2E_AWX_WRONG": "not-the-token",
    }


@pytest.fixture(scope="module")
def app(workdir: Path, prefect_server: PrefectServer, env: dict[str, str]) -> Iterator[Ascob]:
    server = Ascob(workdir, prefect_server.api_url, env=env).start()
    yield server
    server.stop()


def spec(template: Template, instance: str = "prod", **params: str) -> dict[str, Any]:
    return {
        "description": "awx e2e",
        "submitter": "carol",
        "labels": {"awx_instance": instance, "awx_job_template": template.name},
        "parameters": params,
    }


def template(awx: FakeAwx, **kwargs: Any) -> Template:
    kwargs.setdefault("lines", LINES)
    return awx.add_template(f"e2e-{uuid.uuid4().hex[:6]}", **kwargs)


def test_awx_is_listed_with_its_instances(app: Ascob) -> None:
    found = {b["id"]: b for b in app.http.get("/api/backends").json()}
    assert found["awxBackend"]["state"] == "loaded"
    assert found["awxBackend"]["instances"] == ["badcreds", "prod"]


def test_job_runs_to_succeded_with_its_output(app: Ascob, awx: FakeAwx) -> None:
    tpl = template(awx, pending_delay=0.5, event_lag=0.5)
    run_id = app.submit(spec(tpl, env="prod"))
    app.wait_status(run_id, "SUCCEDED")
    (launch,) = awx.launches_of(tpl)
    assert launch["extra_vars"]["env"] == "prod"
    r = wait_until(
        lambda: (
            (r := app.http.get(f"/api/runs/{run_id}/output.txt")).headers["X-Ascob-More"] == "false"
            and r
        ),
        30,
        "the output to be complete",
    )
    assert "env=prod" in r.text and r.text.endswith(
        "TASK [done]\nPLAY RECAP ****\r\nlocalhost : ok=2\n"
    )
    assert "PLAY [ascob] ****\n" in r.text  # ANSI colours removed
    size = int(r.headers["X-Ascob-Next-Offset"])
    assert size == len(r.text.encode())
    tail = app.http.get(f"/api/runs/{run_id}/output.txt", params={"offset": size - 18})
    assert tail.text == r.text[-18:]


def test_stopped_job_is_canceled_in_awx_and_aborted(app: Ascob, awx: FakeAwx) -> None:
    tpl = template(awx, final="HANG")
    run_id = app.submit(spec(tpl))
    app.wait_status(run_id, "RUNNING")
    assert app.http.delete(f"/api/runs/{run_id}", params={"force": "true"}).status_code == 200
    app.wait_status(run_id, "ABORTED")
    (launch,) = awx.launches_of(tpl)
    assert awx.jobs[launch["job"]].canceled_at is not None
    assert ("POST", f"/api/v2/jobs/{launch['job']}/cancel/") in awx.requests


def test_failed_job_fails_with_the_job_explanation(app: Ascob, awx: FakeAwx) -> None:
    tpl = template(awx, final="error", job_explanation="Job terminated due to error")
    run_id = app.submit(spec(tpl))
    app.wait_status(run_id, "FAILED")
    text = app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert "Job terminated due to error" in text


def test_bad_credentials_fail_the_run_with_awx_message(app: Ascob, awx: FakeAwx) -> None:
    tpl = template(awx)
    run_id = app.submit(spec(tpl, instance="badcreds"))
    app.wait_status(run_id, "FAILED")
    text = app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert "401" in text and "Authentication credentials were not provided" in text
    assert not awx.launches_of(tpl)


def test_unknown_template_fails_the_run_with_awx_message(app: Ascob) -> None:
    labels = {"awx_instance": "prod", "awx_job_template": "999999"}
    run_id = app.submit({"labels": labels})
    app.wait_status(run_id, "FAILED")
    assert "Not found." in app.http.get(f"/api/runs/{run_id}/output.txt").text


def test_ignored_variables_fail_the_run_and_say_the_job_was_canceled(
    app: Ascob, awx: FakeAwx
) -> None:
    tpl = template(awx, ask_variables_on_launch=False, survey=("env",), final="HANG")
    run_id = app.submit(spec(tpl, env="prod"))
    app.wait_status(run_id, "FAILED")
    text = app.http.get(f"/api/runs/{run_id}/output.txt").text
    (launch,) = awx.launches_of(tpl)
    assert "Prompt on launch" in text and f"canceled AWX job {launch['job']}" in text
    assert awx.jobs[launch["job"]].canceled_at is not None


def test_polling_outlives_an_awx_outage(app: Ascob, awx: FakeAwx) -> None:
    tpl = template(awx, line_interval=0.3)
    awx.faults.add("GET", r"/api/v2/jobs/\d+/$", "503", times=2)
    awx.faults.add("GET", r"/api/v2/jobs/\d+/$", "hang", times=1, seconds=3)  # a timeout
    awx.faults.add("GET", r"/api/v2/jobs/\d+/$", "malformed", times=2)
    run_id = app.submit(spec(tpl))
    info = app.wait_status(run_id, "SUCCEDED", "FAILED", "IN_DOUBT", timeout=120)
    assert info["status"] == "SUCCEDED"
    assert not awx.faults.faults or all(f.times == 0 for f in awx.faults.faults)  # all were met
    awx.faults.clear()


def test_a_lost_launch_answer_is_found_again(app: Ascob, awx: FakeAwx) -> None:
    tpl = template(awx)
    awx.faults.add("POST", rf"/job_templates/{tpl.id}/launch/$", "hang", seconds=4)
    run_id = app.submit(spec(tpl))
    app.wait_status(run_id, "SUCCEDED")
    assert len(awx.launches_of(tpl)) == 1


def test_a_launch_answered_500_without_a_job_is_in_doubt(app: Ascob, awx: FakeAwx) -> None:
    tpl = template(awx)
    awx.faults.add("POST", rf"/job_templates/{tpl.id}/launch/$", "500")
    run_id = app.submit(spec(tpl))
    app.wait_status(run_id, "IN_DOUBT")
    assert "not launched again" in app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert not awx.launches_of(tpl)


def test_restart_in_the_middle_reattaches(
    workdir: Path, prefect_server: PrefectServer, env: dict[str, str], awx: FakeAwx
) -> None:
    restartable = Ascob(
        workdir,
        prefect_server.api_url,
        env={**env, "ASCOB_EXECUTOR_ID": f"awx-e2e-{uuid.uuid4().hex[:6]}"},
    ).start()
    try:
        lines = [f"TASK [step {i}]" for i in range(40)]
        tpl = template(awx, lines=lines, line_interval=0.5)
        run_id = restartable.submit(spec(tpl))
        restartable.wait_status(run_id, "RUNNING")
        restartable.kill()
        (launch,) = awx.launches_of(tpl)
        assert awx.jobs[launch["job"]].state(time.time())[0] == "running"  # killed mid-job
        restartable.restart()
        info = restartable.wait_status(run_id, "SUCCEDED", "FAILED", "IN_DOUBT", timeout=120)
        assert info["status"] == "SUCCEDED"
        assert len(awx.launches_of(tpl)) == 1  # re-attached, never launched twice
        text = restartable.http.get(f"/api/runs/{run_id}/output.txt").text
        assert "TASK [step 39]" in text
    finally:
        restartable.stop()
