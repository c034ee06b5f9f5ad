"""GitLab specifics, against the fake GitLab on loopback: variables and the correlation value,
every pipeline status, stage-ordered logs read by offset, cancel and force-cancel, refusals, a lost
creation answer, and what happens when GitLab misbehaves."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import backends.gitlab as gitlab_backend
from backends import (
    BackendContext,
    BackendError,
    BackendStatus,
    BackendUnavailable,
    Job,
    JobNotFound,
    SpecRejected,
    SubmitRefused,
)
from backends.gitlab import GitLabBackend
from backends.gitlab.trace import clean_log
from tests.fakes.fake_gitlab import FakeGitLab, JobSpec, Project
from tests.fakes.server import InProcess

TOKEN_ENV = "TEST_GITLAB_TOKEN"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGitLab]:
    os.environ[TOKEN_ENV] = "gitlab-secret"
    yield FakeGitLab()  # served in-process (InProcess): not started


def make_backend(fake: FakeGitLab, tmp_path: Path, **extra: Any) -> GitLabBackend:
    instance = {"url": fake.url, "token_env": TOKEN_ENV, "timeout": 2, **extra}
    return GitLabBackend(BackendContext(tmp_path, {"main": instance}), InProcess(fake.server))


@pytest.fixture
async def backend(fake: FakeGitLab, tmp_path: Path) -> Any:
    b = make_backend(fake, tmp_path)
    yield b
    await b.aclose()
    fake.faults.clear()


@pytest.fixture
def quick_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gitlab_backend, "LOST_ANSWER_LOOKUPS", (0.0, 0.2))


def new_project(fake: FakeGitLab, *jobs: JobSpec, **kwargs: Any) -> Project:
    return fake.add_project(f"team/app-{uuid.uuid4().hex[:6]}", list(jobs) or None, **kwargs)


def job_for(project: Project | str, parameters: dict[str, str] | None = None, **labels: str) -> Job:
    path = project if isinstance(project, str) else project.path
    return Job(42, "d", "u", {"gitlab_project": path, **labels}, parameters or {}, "w")


async def final(backend: GitLabBackend, keys: dict[str, str]) -> Any:
    for _ in range(300):
        report = await backend.status(keys)
        if report.status.is_final:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"not final: {report}")


async def until(backend: GitLabBackend, keys: dict[str, str], wanted: BackendStatus) -> Any:
    for _ in range(300):
        report = await backend.status(keys)
        if report.status is wanted:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {wanted}: {report}")


async def read_live(backend: GitLabBackend, keys: dict[str, str]) -> tuple[list[str], int]:
    pieces, offset = [], 0
    for _ in range(600):
        chunk = await backend.output(keys, offset)
        assert chunk.next_offset >= offset
        pieces.append(chunk.text)
        offset = chunk.next_offset
        if not chunk.more:
            return pieces, offset
        await asyncio.sleep(0.05)
    raise AssertionError(f"output never complete: {''.join(pieces)!r}")


# --------------------------------------------------------------------------- submission


async def test_parameters_arrive_as_pipeline_variables_with_the_run_value(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    project = new_project(fake)
    keys = await backend.submit(job_for(project, {"ENV": "prod", "GREETING": "hi there"}))
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    [pipeline] = fake.started(keys["gitlabRunValue"])
    assert keys["gitlabRunValue"].startswith("42-")
    assert pipeline.variables == [
        {"key": "ENV", "value": "prod"},
        {"key": "GREETING", "value": "hi there"},
        {"key": "ASCOB_RUN", "value": keys["gitlabRunValue"]},
    ]
    assert keys["gitlabPipelineId"] == str(pipeline.id) and keys["gitlabRef"] == "main"
    encoded = project.path.replace("/", "%2F")
    assert ("POST", f"/api/v4/projects/{encoded}/pipeline") in fake.requests
    assert "ENV=prod\nGREETING=hi there\n" in (await backend.output(keys, 0)).text


async def test_project_by_id_runs_on_its_default_branch(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    project = new_project(fake, branches={"develop"}, default_branch="develop")
    keys = await backend.submit(job_for(str(project.id)))
    assert keys["gitlabRef"] == "develop"
    assert [p.ref for p in fake.of_project(project)] == ["develop"]
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED


async def test_bad_credentials_are_refused_with_gitlab_message(
    fake: FakeGitLab, tmp_path: Path
) -> None:
    os.environ["TEST_GITLAB_WRONG"] = "wrong"
    backend = make_backend(fake, tmp_path, token_env="TEST_GITLAB_WRONG")
    project = new_project(fake)
    with pytest.raises(SubmitRefused, match="401 Unauthorized"):
        await backend.submit(job_for(project, gitlab_ref="main"))
    await backend.aclose()
    assert fake.of_project(project) == []


async def test_missing_token_variable_is_refused(fake: FakeGitLab, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path, token_env="TEST_GITLAB_UNSET_VARIABLE")
    with pytest.raises(SubmitRefused, match="TEST_GITLAB_UNSET_VARIABLE"):
        await backend.submit(job_for(new_project(fake)))


async def test_unknown_project_is_refused(backend: GitLabBackend) -> None:
    with pytest.raises(SubmitRefused, match="404 Project Not Found"):
        await backend.submit(job_for("nobody/nothing", gitlab_ref="main"))
    with pytest.raises(SubmitRefused, match="404 Project Not Found"):
        await backend.submit(job_for("nobody/nothing"))  # via the default-branch lookup


async def test_unknown_ref_is_refused(fake: FakeGitLab, backend: GitLabBackend) -> None:
    project = new_project(fake)
    with pytest.raises(SubmitRefused, match="Reference not found"):
        await backend.submit(job_for(project, gitlab_ref="no-such-branch"))
    assert fake.of_project(project) == []


async def test_workflow_rules_refusal_fails_and_creates_nothing(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    project = new_project(fake, workflow_refuses=True)
    with pytest.raises(SubmitRefused, match=r"Pipeline filtered out by workflow rules\."):
        await backend.submit(job_for(project))
    assert fake.of_project(project) == []


def test_labels_are_validated(fake: FakeGitLab, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path)
    backend.validate({"gitlab_project": "a/b"})  # one instance: the label may be left out
    with pytest.raises(SpecRejected, match="gitlab_instance"):
        backend.validate({"gitlab_instance": "other", "gitlab_project": "a/b"})
    with pytest.raises(SpecRejected, match="gitlab_project"):
        backend.validate({"gitlab_instance": "main", "gitlab_project": ""})


# --------------------------------------------------------------------------- lost answers


async def test_lost_creation_answer_is_found_again_by_its_variable(
    fake: FakeGitLab, backend: GitLabBackend, quick_lookups: None
) -> None:
    project = new_project(fake)
    new_project(fake)  # another project's pipelines are not looked at
    fake.faults.add("POST", r"/pipeline$", "hang", seconds=4)
    keys = await backend.submit(job_for(project))
    [pipeline] = fake.of_project(project)  # created once, never sent again
    assert keys["gitlabPipelineId"] == str(pipeline.id)
    assert pipeline.variable("ASCOB_RUN") == keys["gitlabRunValue"]
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED


async def test_lost_creation_answer_is_found_by_the_pipeline_name(
    fake: FakeGitLab, backend: GitLabBackend, quick_lookups: None
) -> None:
    project = new_project(fake, name_from_run=True)
    fake.faults.add("POST", r"/pipeline$", "hang", seconds=4)
    keys = await backend.submit(job_for(project))
    [pipeline] = fake.of_project(project)
    assert keys["gitlabPipelineId"] == str(pipeline.id)
    encoded = project.path.replace("/", "%2F")
    assert not any(
        p.startswith(f"/api/v4/projects/{encoded}/") and p.endswith("/variables")
        for _, p in fake.requests
    )


async def test_a_creation_answered_5xx_without_pipeline_is_in_doubt(
    fake: FakeGitLab, backend: GitLabBackend, quick_lookups: None
) -> None:
    project = new_project(fake)
    fake.faults.add("POST", r"/pipeline$", "502")
    with pytest.raises(Exception, match="outcome unknown") as info:
        await backend.submit(job_for(project))
    assert not isinstance(info.value, BackendError)  # IN_DOUBT, never retried
    assert fake.of_project(project) == []


async def test_a_lost_answer_that_cannot_be_looked_up_is_in_doubt_and_not_resent(
    fake: FakeGitLab, backend: GitLabBackend, quick_lookups: None
) -> None:
    project = new_project(fake)
    fake.faults.add("POST", r"/pipeline$", "hang", seconds=4)
    fake.faults.add("GET", r"/pipelines$", "500", times=10)
    with pytest.raises(Exception, match="ASCOB_RUN=42-") as info:
        await backend.submit(job_for(project))
    assert not isinstance(info.value, BackendError)
    assert len(fake.of_project(project)) == 1  # GitLab did create it; ASCOB did not send twice


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("gitlab_status", "expected"),
    [
        ("created", BackendStatus.QUEUED),
        ("waiting_for_resource", BackendStatus.QUEUED),
        ("preparing", BackendStatus.QUEUED),
        ("pending", BackendStatus.QUEUED),
        ("scheduled", BackendStatus.QUEUED),
        ("running", BackendStatus.RUNNING),
        ("canceling", BackendStatus.RUNNING),
        ("manual", BackendStatus.RUNNING),
        ("success", BackendStatus.SUCCEEDED),
        ("failed", BackendStatus.FAILED),
        ("canceled", BackendStatus.ABORTED),
        ("skipped", BackendStatus.FAILED),
    ],
)
async def test_every_pipeline_status_is_mapped(
    fake: FakeGitLab, backend: GitLabBackend, gitlab_status: str, expected: BackendStatus
) -> None:
    keys = await backend.submit(job_for(new_project(fake, JobSpec("x", result="HANG"))))
    fake.force_status(int(keys["gitlabPipelineId"]), gitlab_status)
    report = await backend.status(keys)
    assert report.status is expected
    assert report.url and report.url.endswith(f"/-/pipelines/{keys['gitlabPipelineId']}")
    if gitlab_status == "manual":
        assert report.message == "waiting for a manual action"
    if expected in (BackendStatus.FAILED, BackendStatus.ABORTED):
        assert gitlab_status in (report.message or "")


async def test_statuses_follow_the_pipeline_over_time(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    project = new_project(
        fake, JobSpec("build", runner_delay=1.5, lines=["a"] * 10), create_delay=1.5
    )
    keys = await backend.submit(job_for(project))
    seen: list[tuple[BackendStatus, str | None]] = []
    for _ in range(300):
        report = await backend.status(keys)
        if not seen or seen[-1] != (report.status, report.message):
            seen.append((report.status, report.message))
        if report.status.is_final:
            break
        await asyncio.sleep(0.05)
    assert seen == [
        (BackendStatus.QUEUED, "created"),
        (BackendStatus.QUEUED, "pending"),
        (BackendStatus.RUNNING, None),
        (BackendStatus.SUCCEEDED, None),
    ]


async def test_a_failed_job_fails_the_run_and_is_named(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    project = new_project(
        fake, JobSpec("build", stage="build"), JobSpec("unit", stage="test", result="failed")
    )
    keys = await backend.submit(job_for(project))
    report = await final(backend, keys)
    assert report.status is BackendStatus.FAILED
    assert report.message == (
        f"pipeline #{keys['gitlabPipelineId']} failed (failed jobs: unit (script_failure))"
    )


async def test_a_pipeline_created_failed_says_why(fake: FakeGitLab, backend: GitLabBackend) -> None:
    project = new_project(fake, yaml_errors="jobs:build:script config should be a string")
    keys = await backend.submit(job_for(project))
    report = await final(backend, keys)
    assert report.status is BackendStatus.FAILED
    assert "configuration error: jobs:build:script" in (report.message or "")
    chunk = await backend.output(keys, 0)
    assert chunk.text == "" and not chunk.more


async def test_an_allowed_failure_succeeds_with_warnings(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    project = new_project(fake, JobSpec("lint", result="failed", allow_failure=True))
    keys = await backend.submit(job_for(project))
    report = await final(backend, keys)
    assert report.status is BackendStatus.SUCCEEDED and report.message == "passed with warnings"


async def test_a_blocking_manual_job_is_running_waiting_for_action(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    project = new_project(
        fake, JobSpec("build", stage="build"), JobSpec("deploy", stage="deploy", manual=True)
    )
    keys = await backend.submit(job_for(project))
    report = await until(backend, keys, BackendStatus.RUNNING)
    for _ in range(100):
        if report.message == "waiting for a manual action":
            break
        await asyncio.sleep(0.05)
        report = await backend.status(keys)
    assert report.message == "waiting for a manual action"
    await backend.stop(keys)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED


async def test_an_unknown_status_never_crashes_the_poll(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    keys = await backend.submit(job_for(new_project(fake, JobSpec("x", result="HANG"))))
    pipeline_id = int(keys["gitlabPipelineId"])
    fake.force_status(pipeline_id, "teleporting")
    with pytest.raises(BackendUnavailable, match="teleporting"):
        await backend.status(keys)  # not final: asked again later
    fake.force_status(pipeline_id, "teleported", finished=True)
    report = await backend.status(keys)  # ended with a status nobody knows: FAILED, explained
    assert report.status is BackendStatus.FAILED and "teleported" in (report.message or "")


async def test_a_pipeline_gitlab_no_longer_knows_is_not_found(backend: GitLabBackend) -> None:
    keys = {"gitlabInstance": "main", "gitlabProject": "x", "gitlabPipelineId": "1"}
    with pytest.raises(JobNotFound):
        await backend.status(keys)


@pytest.mark.parametrize("kind", ["500", "502", "malformed", "hang"])
async def test_transient_errors_while_polling_are_unavailable_not_final(
    fake: FakeGitLab, backend: GitLabBackend, kind: str
) -> None:
    keys = await backend.submit(job_for(new_project(fake)))
    await final(backend, keys)
    fake.faults.add("GET", r"/pipelines/\d+$", kind, seconds=3)
    with pytest.raises(BackendUnavailable):
        await backend.status(keys)
    assert (await backend.status(keys)).status is BackendStatus.SUCCEEDED  # fault gone
    fake.faults.add("GET", r"/pipelines/\d+/jobs$", kind, seconds=3)
    with pytest.raises(BackendUnavailable):
        await backend.output(keys, 0)
    assert "Job succeeded" in (await backend.output(keys, 0)).text


# --------------------------------------------------------------------------- output


def test_logs_are_cleaned_line_by_line() -> None:
    raw = (
        b"section_start:1700000000:build[collapsed=true]\r\x1b[0K\x1b[36;1mBuilding\x1b[0;m\n"
        b"\n"
        b"50%\r100%\r\n"
        b"section_end:1700000000:build\r\x1b[0K\n"
        b"\xff half"
    )
    assert clean_log(raw, complete=False) == b"Building\n\n100%\n"  # the last line may grow
    assert clean_log(raw, complete=True) == b"Building\n\n100%\n\xff half\n"


async def test_output_grows_while_the_job_runs_in_whole_lines(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    lines = [f"line {i}" for i in range(12)]
    project = new_project(
        fake,
        JobSpec("build", stage="build", lines=["compiled"], echo_variables=False),
        JobSpec("test", stage="test", lines=lines, line_interval=0.2, echo_variables=False),
    )
    keys = await backend.submit(job_for(project))
    pieces, offset = await read_live(backend, keys)
    live = "".join(pieces)
    assert len([p for p in pieces if p]) > 3  # it came while the job ran, in several pieces
    assert all(p.endswith("\n") for p in pieces if p)  # a half-written line is never served
    whole = await backend.output(keys, 0)
    assert live == whole.text and offset == len(whole.text.encode()) == whole.next_offset
    build, test = (j.id for j in fake.of_project(project)[0].jobs)
    assert whole.text == (
        f"=== job build (stage build, #{build}) ===\n"
        "Running with gitlab-runner 17.5.0 (fake)\n"
        "Preparing environment\n"
        "Fetching changes 100%\n"
        'Executing "step_script" stage of the job script\n'
        "$ ./job.sh\n"
        "compiled\n"
        "Job succeeded\n"
        f"=== job test (stage test, #{test}) ===\n"
        "Running with gitlab-runner 17.5.0 (fake)\n"
        "Preparing environment\n"
        "Fetching changes 100%\n"
        'Executing "step_script" stage of the job script\n'
        "$ ./job.sh\n" + "".join(f"{line}\n" for line in lines) + "Job succeeded\n"
    )
    rest = await backend.output(keys, offset)
    assert rest.text == "" and not rest.more


async def test_a_new_process_reads_from_any_offset(
    fake: FakeGitLab, backend: GitLabBackend, tmp_path: Path
) -> None:
    project = new_project(
        fake, JobSpec("one", stage="a", lines=["é1", "é2"]), JobSpec("two", stage="b")
    )
    keys = await backend.submit(job_for(project))
    await final(backend, keys)
    whole = (await backend.output(keys, 0)).text.encode()
    other = make_backend(fake, tmp_path)  # nothing remembered: only the keys
    try:
        for offset in (0, 7, whole.index(b"=== job two"), len(whole) - 3, len(whole)):
            chunk = await other.output(dict(keys), offset)
            assert chunk.text.encode() == whole[offset:] and chunk.next_offset == len(whole)
    finally:
        await other.aclose()


async def test_parallel_jobs_of_a_stage_appear_one_after_the_other(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    slow = [f"slow {i}" for i in range(10)]
    project = new_project(
        fake,
        JobSpec("slow", stage="test", lines=slow, line_interval=0.1, echo_variables=False),
        JobSpec("quick", stage="test", lines=["quick 0"], echo_variables=False),
    )
    keys = await backend.submit(job_for(project))
    pieces, _ = await read_live(backend, keys)
    text = "".join(pieces)
    assert text == (await backend.output(keys, 0)).text  # offsets never shifted
    assert text.index("slow 9") < text.index("=== job quick") < text.index("quick 0")


# --------------------------------------------------------------------------- stop


async def test_stop_cancels_the_pipeline(fake: FakeGitLab, backend: GitLabBackend) -> None:
    project = new_project(fake, JobSpec("deploy", result="HANG"))
    keys = await backend.submit(job_for(project))
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys)
    report = await final(backend, keys)
    assert report.status is BackendStatus.ABORTED
    encoded, pipeline_id = project.path.replace("/", "%2F"), keys["gitlabPipelineId"]
    cancel = ("POST", f"/api/v4/projects/{encoded}/pipelines/{pipeline_id}/cancel")
    assert cancel in fake.requests
    assert (await backend.output(keys, 0)).text.endswith("ERROR: Job failed: canceled\n")
    assert fake.of_project(project)[0].jobs[0].force_cancels == 0


async def test_stop_while_queued_aborts(fake: FakeGitLab, backend: GitLabBackend) -> None:
    project = new_project(fake, JobSpec("deploy", runner_delay=30))
    keys = await backend.submit(job_for(project))
    assert (await backend.status(keys)).status is BackendStatus.QUEUED
    await backend.stop(keys)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    assert (await backend.output(keys, 0)).text == ""  # nothing ran


async def test_forced_stop_force_cancels_jobs_whose_runner_does_not_confirm(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    project = new_project(fake, JobSpec("deploy", result="HANG", cancel_grace=None))
    keys = await backend.submit(job_for(project))
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys)  # a clean stop: the runner never confirms
    await asyncio.sleep(0.5)
    report = await backend.status(keys)
    assert report.status is BackendStatus.RUNNING and report.message == "canceling"
    await backend.stop(keys, force=True)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    job = fake.of_project(project)[0].jobs[0]
    assert job.force_cancels == 1
    encoded = project.path.replace("/", "%2F")
    assert ("POST", f"/api/v4/projects/{encoded}/jobs/{job.id}/cancel") in fake.requests


async def test_forced_stop_of_a_running_job_ends_it_at_once(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    project = new_project(fake, JobSpec("deploy", result="HANG", cancel_grace=None))
    keys = await backend.submit(job_for(project))
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys, force=True)
    assert (await backend.status(keys)).status is BackendStatus.ABORTED


async def test_a_stop_that_fails_transiently_is_unavailable(
    fake: FakeGitLab, backend: GitLabBackend
) -> None:
    keys = await backend.submit(job_for(new_project(fake, JobSpec("x", result="HANG"))))
    fake.faults.add("POST", r"/cancel$", "503")
    with pytest.raises(BackendUnavailable):
        await backend.stop(keys)
    await backend.stop(keys)  # the engine asks again
    assert (await final(backend, keys)).status is BackendStatus.ABORTED


# --------------------------------------------------------------------------- re-attach


async def test_a_restarted_ascob_reattaches_through_the_keys(
    fake: FakeGitLab, tmp_path: Path
) -> None:
    project = new_project(
        fake, JobSpec("build", lines=[f"l{i}" for i in range(10)], line_interval=0.1)
    )
    first = make_backend(fake, tmp_path)
    keys = await first.submit(job_for(project))
    await until(first, keys, BackendStatus.RUNNING)
    await first.aclose()
    again = make_backend(fake, tmp_path)  # a new process: only the stored keys
    try:
        assert (await final(again, dict(keys))).status is BackendStatus.SUCCEEDED
        assert "l9\n" in (await again.output(dict(keys), 0)).text
    finally:
        await again.aclose()
    assert len(fake.of_project(project)) == 1
