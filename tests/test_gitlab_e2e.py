"""GitLab through ``ascob serve``: configured from ASCOB_CONFIG, the token from the environment,
against the fake GitLab on loopback: a pipeline that succeeds with its logs as output, one stopped
(cleanly and by force), refusals, and a kill + restart of ASCOB while a pipeline runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_gitlab import FakeGitLab, JobSpec, Project
from tests.harness import Ascob, PrefectServer

LINES = ["compiling", "testing", "done"]


@pytest.fixture(scope="module")
def gitlab() -> Iterator[FakeGitLab]:
    fake = FakeGitLab().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def config(workdir: Path, gitlab: FakeGitLab) -> dict[str, str]:
    path = workdir / f"gitlab-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(
        f"""
[gitlab.main]
url = "{gitlab.url}"
token_env = "E2E_GITLAB_TOKEN"
timeout = 2

[gitlab.badcreds]
url = "{gitlab.url}"
token_env = "E2E_GITLAB_WRONG"
"""
    )
    return {
        "ASCOB_CONFIG": str(path),
        "E2E_GITLAB_TOKEN": "gitlab-secret",
        "E2E_GITLAB_WRONG": "not-the-token",
    }


@pytest.fixture(scope="module")
def app(workdir: Path, prefect_server: PrefectServer, config: dict[str, str]) -> Iterator[Ascob]:
    server = Ascob(workdir, prefect_server.api_url, env=config).start()
    yield server
    server.stop()


def project(gitlab: FakeGitLab, *jobs: JobSpec, **kwargs: Any) -> Project:
    return gitlab.add_project(f"e2e/app-{uuid.uuid4().hex[:6]}", list(jobs), **kwargs)


def spec(project: Project, instance: str = "main") -> dict[str, Any]:
    return {
        "description": "gitlab e2e",
        "submitter": "carol",
        "labels": {"gitlab_instance": instance, "gitlab_project": project.path},
        "parameters": {"ENV": "prod"},
    }


def test_pipeline_runs_to_succeded_with_its_logs(app: Ascob, gitlab: FakeGitLab) -> None:
    p = project(
        gitlab,
        JobSpec("build", stage="build", lines=["compiled"], runner_delay=0.5),
        JobSpec("test", stage="test", lines=LINES, echo_variables=False),
    )
    run_id = app.submit(spec(p))
    app.wait_status(run_id, "SUCCEDED")
    r = app.http.get(f"/api/runs/{run_id}/output.txt")
    assert r.status_code == 200 and r.headers["X-Ascob-More"] == "false"
    text = r.text
    assert "ENV=prod\n" in text and text.endswith("testing\ndone\nJob succeeded\n")
    assert text.index("=== job build") < text.index("compiled") < text.index("=== job test")
    size = int(r.headers["X-Ascob-Next-Offset"])
    assert size == len(text.encode())
    tail = app.http.get(f"/api/runs/{run_id}/output.txt", params={"offset": size - 14})
    assert tail.text == "Job succeeded\n"
    [pipeline] = gitlab.of_project(p)
    assert (pipeline.variable("ASCOB_RUN") or "").startswith(f"{run_id}-")


@pytest.mark.parametrize("force", [False, True], ids=["clean", "forced"])
def test_stopped_pipeline_ends_aborted(app: Ascob, gitlab: FakeGitLab, force: bool) -> None:
    # forced: the runner never confirms the cancel; only a force-cancel ends the job
    grace = None if force else 0.2
    p = project(gitlab, JobSpec("deploy", result="HANG", cancel_grace=grace))
    run_id = app.submit(spec(p))
    app.wait_status(run_id, "RUNNING")
    r = app.http.delete(f"/api/runs/{run_id}", params={"force": str(force).lower()})
    assert r.status_code == 200, r.text
    app.wait_status(run_id, "ABORTED")
    [pipeline] = gitlab.of_project(p)
    assert pipeline.canceled_at is not None
    assert pipeline.jobs[0].force_cancels == (1 if force else 0)


def test_bad_credentials_fail_the_run_with_gitlab_message(app: Ascob, gitlab: FakeGitLab) -> None:
    p = project(gitlab, JobSpec("build"))
    run_id = app.submit(spec(p, instance="badcreds"))
    app.wait_status(run_id, "FAILED")
    assert "401 Unauthorized" in app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert gitlab.of_project(p) == []


def test_workflow_rules_refusal_fails_the_run(app: Ascob, gitlab: FakeGitLab) -> None:
    p = project(gitlab, JobSpec("build"), workflow_refuses=True)
    run_id = app.submit(spec(p))
    app.wait_status(run_id, "FAILED")
    output = app.http.get(f"/api/runs/{run_id}/output.txt").text
    assert "Pipeline filtered out by workflow rules." in output


def test_a_restarted_ascob_reattaches_to_the_running_pipeline(
    workdir: Path, prefect_server: PrefectServer, gitlab: FakeGitLab, config: dict[str, str]
) -> None:
    lines = [f"step {i}" for i in range(40)]
    p = project(gitlab, JobSpec("long", lines=lines, line_interval=0.5, echo_variables=False))
    app = Ascob(workdir, prefect_server.api_url, env=config).start()
    try:
        run_id = app.submit(spec(p))
        app.wait_status(run_id, "RUNNING")
        app.kill()  # as a crash would, in the middle of the pipeline
        [pipeline] = gitlab.of_project(p)
        assert pipeline.jobs[0].status == "running"
        app.restart()
        app.wait_status(run_id, "SUCCEDED", timeout=120)
        assert len(gitlab.of_project(p)) == 1  # re-attached, never created again
        text = app.http.get(f"/api/runs/{run_id}/output.txt").text
        assert text.endswith("step 39\nJob succeeded\n")
    finally:
        app.stop()
