"""GitHub Actions through ``ascob serve``: configured from ASCOB_CONFIG, the token from the
environment, against the fake GitHub on loopback. A run that succeeds with its job logs in
output.txt, one stopped with DELETE, refusals that fail the run with GitHub's message, a lost
dispatch answer, and a kill + restart of ``ascob serve`` while a workflow runs (re-attached)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_github import FakeGitHub, FakeJob, FakeWorkflow
from tests.harness import Ascob, PrefectServer, wait_until

REPO = "e2e/pipelines"


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    yield fake
    fake.stop()


def write_config(workdir: Path, github: FakeGitHub) -> dict[str, str]:
    config = workdir / f"github-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        f"""
[github.cloud]
url = "{github.url}"
token_env = "E2E_GITHUB_TOKEN"
timeout = 2
find_timeout = 3
find_interval = 0.3

[github.badcreds]
url = "{github.url}"
token_env = "E2E_GITHUB_WRONG"
"""
    )
    return {
        "ASCOB_CONFIG": str(config),
        "E2E_GITHUB_TOKEN": "github-secret",
        "E2E_GITHUB_WRONG": "not-the-token",
    }


@pytest.fixture(scope="module")
def app(workdir: Path, prefect_server: PrefectServer, github: FakeGitHub) -> Iterator[Ascob]:
    server = Ascob(workdir, prefect_server.api_url, env=write_config(workdir, github)).start()
    yield server
    server.stop()


def workflow(github: FakeGitHub, **kwargs: Any) -> FakeWorkflow:
    kwargs.setdefault("jobs", [FakeJob("build", ["compiling"]), FakeJob("test", ["testing"])])
    kwargs.setdefault("inputs", {"ascob_run": False, "ENVIRONMENT": True})
    return github.add_workflow(REPO, f"wf-{uuid.uuid4().hex[:6]}.yml", **kwargs)


def spec(wf: FakeWorkflow, instance: str = "cloud", **labels: str) -> dict[str, Any]:
    return {
        "description": "github e2e",
        "submitter": "carol",
        "labels": {
            "github_instance": instance,
            "github_repository": wf.repository,
            "github_workflow": wf.file,
            **labels,
        },
        "parameters": {"ENVIRONMENT": "staging"},
    }


def test_backend_is_listed_with_its_instances(app: Ascob) -> None:
    found = {b["id"]: b for b in app.http.get("/api/backends").json()}
    assert found["githubActionsBackend"]["state"] == "loaded"
    assert found["githubActionsBackend"]["instances"] == ["badcreds", "cloud"]


def test_workflow_runs_to_succeded_with_its_job_logs(app: Ascob, github: FakeGitHub) -> None:
    wf = workflow(github, queue_delay=0.5)
    run_id = app.submit(spec(wf))
    app.wait_status(run_id, "SUCCEDED")
    r = app.http.get(f"/api/runs/{run_id}/output.txt")
    assert r.status_code == 200
    text = r.text
    assert text.index("=== job build (success) ===") < text.index("=== job test (success) ===")
    assert "ENVIRONMENT=staging" in text and "compiling\n" in text and text.endswith("testing\n")
    assert r.headers["X-Ascob-More"] == "false"
    assert int(r.headers["X-Ascob-Next-Offset"]) == len(text.encode())
    (run,) = github.runs_of(wf)
    assert run.inputs["ENVIRONMENT"] == "staging" and run.inputs["ascob_run"]


def test_delete_cancels_the_workflow_run(app: Ascob, github: FakeGitHub) -> None:
    wf = workflow(github, jobs=[FakeJob("serve", ["up"], "HANG")])
    run_id = app.submit(spec(wf))
    app.wait_status(run_id, "RUNNING")
    assert app.http.delete(f"/api/runs/{run_id}").status_code == 200
    app.wait_status(run_id, "ABORTED")
    (run,) = github.runs_of(wf)
    assert run.cancel_requests == ["cancel"]
    assert "=== job serve (cancelled) ===" in app.http.get(f"/api/runs/{run_id}/output.txt").text


def test_forced_delete_force_cancels(app: Ascob, github: FakeGitHub) -> None:
    wf = workflow(github, jobs=[FakeJob("serve", ["up"], "HANG", stubborn=True)])
    run_id = app.submit(spec(wf))
    app.wait_status(run_id, "RUNNING")
    assert app.http.delete(f"/api/runs/{run_id}", params={"force": "true"}).status_code == 200
    app.wait_status(run_id, "ABORTED")
    assert github.runs_of(wf)[0].cancel_requests == ["force-cancel"]


def test_bad_credentials_fail_the_run_with_github_message(app: Ascob, github: FakeGitHub) -> None:
    wf = workflow(github)
    run_id = app.submit(spec(wf, instance="badcreds"))
    app.wait_status(run_id, "FAILED")
    output = app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert "401" in output and "Bad credentials" in output
    assert github.runs_of(wf) == []


def test_unknown_workflow_fails_the_run_with_github_message(app: Ascob, github: FakeGitHub) -> None:
    wf = workflow(github)
    run_id = app.submit(spec(wf, github_workflow="missing.yml"))
    app.wait_status(run_id, "FAILED")
    output = app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert "no workflow 'missing.yml'" in output and "Not Found" in output


def test_polling_outlives_outages_and_rate_limits(app: Ascob, github: FakeGitHub) -> None:
    wf = workflow(github, jobs=[FakeJob("slow", ["a", "b", "c", "d"], line_interval=0.5)])
    run_id = app.submit(spec(wf))
    app.wait_status(run_id, "RUNNING")
    (run,) = github.runs_of(wf)
    github.faults.add("GET", rf"/actions/runs/{run.id}$", "500", times=2)
    github.faults.add("GET", rf"/actions/runs/{run.id}$", "malformed", times=2)
    github.faults.add("GET", rf"/actions/runs/{run.id}$", "hang", times=1, seconds=3)
    github.limit_next("GET", rf"/actions/runs/{run.id}$", "primary", seconds=2)
    info = app.wait_status(run_id, "SUCCEDED", "FAILED", "IN_DOUBT", timeout=90)
    assert info["status"] == "SUCCEDED"
    assert github.hits_while_limited >= 1


def test_a_lost_dispatch_answer_is_found_again(app: Ascob, github: FakeGitHub) -> None:
    wf = workflow(github)
    github.faults.add("POST", rf"/workflows/{wf.id}/dispatches$", "hang", seconds=4)
    run_id = app.submit(spec(wf))
    app.wait_status(run_id, "SUCCEDED")
    assert len(github.runs_of(wf)) == 1


def test_a_lost_answer_without_run_name_ends_in_doubt(app: Ascob, github: FakeGitHub) -> None:
    wf = workflow(github, run_name=None)
    github.faults.add("POST", rf"/workflows/{wf.id}/dispatches$", "hang", seconds=4)
    run_id = app.submit(spec(wf))
    app.wait_status(run_id, "IN_DOUBT")
    assert "outcome unknown" in app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert len(github.runs_of(wf)) == 1  # GitHub did start it once; ASCOB never sent it again


def test_restart_mid_run_reattaches(
    workdir: Path, prefect_server: PrefectServer, github: FakeGitHub
) -> None:
    wf = workflow(
        github,
        jobs=[FakeJob("build", ["compiling"]), FakeJob("long", ["step"] * 30, line_interval=0.4)],
    )
    server = Ascob(workdir, prefect_server.api_url, env=write_config(workdir, github)).start()
    try:
        run_id = server.submit(spec(wf))
        server.wait_status(run_id, "RUNNING")
        before = server.http.get(f"/api/runs/{run_id}/output.txt")
        assert before.headers["X-Ascob-More"] == "true"  # still running when killed
        server.kill()
        server.restart()
        info = server.wait_status(run_id, "SUCCEDED", "FAILED", "IN_DOUBT", timeout=120)
        assert info["status"] == "SUCCEDED"
        assert len(github.runs_of(wf)) == 1  # re-attached, not dispatched again
        text = wait_until(
            lambda: server.http.get(f"/api/runs/{run_id}/output.txt").text, 10, "the output"
        )
        assert "=== job long (success) ===" in text
    finally:
        server.stop()
