"""GitHub Actions specifics, against the fake GitHub REST API on loopback: inputs, status
mapping, job logs as jobs complete, cancel/force-cancel, rate limits, refusals, lost dispatch
answers, older GHES without ``return_run_details``, and re-attaching from a new process."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import (
    BackendContext,
    BackendError,
    BackendStatus,
    BackendUnavailable,
    Job,
    OutcomeUnknown,
    SpecRejected,
    StatusReport,
    SubmitRefused,
)
from backends.github import GitHubActionsBackend
from tests.fakes.fake_github import FakeGitHub, FakeJob, FakeWorkflow
from tests.fakes.server import InProcess

TOKEN_ENV = "TEST_GITHUB_TOKEN"
REPO = "acme/deploys"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGitHub]:
    os.environ[TOKEN_ENV] = "github-secret"
    server = FakeGitHub().start()
    yield server
    server.stop()


def make_backend(fake: FakeGitHub, tmp_path: Path, **extra: Any) -> GitHubActionsBackend:
    instance = {
        "url": fake.url,
        "token_env": TOKEN_ENV,
        "timeout": 1,
        "find_timeout": 3,
        "find_interval": 0.2,
        **extra,
    }
    transport = InProcess(fake.server, fake.blob)
    return GitHubActionsBackend(BackendContext(tmp_path, {"cloud": instance}), transport)


@pytest.fixture
async def backend(fake: FakeGitHub, tmp_path: Path) -> Any:
    b = make_backend(fake, tmp_path)
    yield b
    await b.aclose()
    fake.faults.clear()


def new_workflow(fake: FakeGitHub, **kwargs: Any) -> FakeWorkflow:
    kwargs.setdefault("inputs", {"ascob_run": False, "GREETING": False, "TARGET": False})
    return fake.add_workflow(kwargs.pop("repo", REPO), f"wf-{uuid.uuid4().hex[:6]}.yml", **kwargs)


def job_for(
    wf: FakeWorkflow,
    parameters: dict[str, str] | None = None,
    run_id: int = 1,
    **labels: str,
) -> Job:
    all_labels = {"github_repository": wf.repository, "github_workflow": wf.file, **labels}
    return Job(run_id, "d", "u", all_labels, parameters or {}, "w")


async def final(backend: GitHubActionsBackend, keys: dict[str, str]) -> StatusReport:
    for _ in range(300):
        report = await backend.status(keys)
        if report.status.is_final:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"not final: {report}")


async def until(backend: GitHubActionsBackend, keys: dict[str, str], wanted: BackendStatus) -> None:
    for _ in range(300):
        if (await backend.status(keys)).status is wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {wanted}")


# --------------------------------------------------------------------------- dispatch


async def test_parameters_arrive_as_inputs_on_the_default_branch(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    fake.add_repo("acme/trunk", default_branch="trunk")
    wf = new_workflow(fake, repo="acme/trunk")
    keys = await backend.submit(job_for(wf, {"GREETING": "hello there", "TARGET": "prod"}))
    assert [d["run_id"] for d in fake.dispatches if d["workflow"] == wf.file] == [
        int(keys["githubRunId"])
    ]
    sent = fake.runs[int(keys["githubRunId"])]
    assert sent.ref == "trunk"  # read from GET /repos/{owner}/{repo}
    assert sent.inputs == {
        "GREETING": "hello there",
        "TARGET": "prod",
        "ascob_run": keys["githubCorrelation"],
    }
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    text = (await backend.output(keys, 0)).text
    assert "GREETING=hello there" in text and "TARGET=prod" in text


async def test_the_ref_label_chooses_the_branch(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    fake.add_repo("acme/refs", refs=("release/2.0",))
    wf = new_workflow(fake, repo="acme/refs")
    keys = await backend.submit(job_for(wf, github_ref="release/2.0"))
    assert fake.runs[int(keys["githubRunId"])].ref == "release/2.0"
    with pytest.raises(SubmitRefused, match="No ref found for: nope"):
        await backend.submit(job_for(wf, github_ref="nope"))


async def test_a_parameter_named_like_the_correlation_input_is_refused(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake)
    with pytest.raises(SubmitRefused, match="ascob_run is set by ASCOB"):
        await backend.submit(job_for(wf, {"ascob_run": "mine"}))
    assert fake.runs_of(wf) == []


async def test_a_workflow_without_the_correlation_input_is_refused_with_a_hint(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake, inputs={"GREETING": False})
    with pytest.raises(SubmitRefused) as info:
        await backend.submit(job_for(wf))
    assert "Unexpected inputs provided" in str(info.value)
    assert "must declare the workflow_dispatch input ascob_run" in str(info.value)
    assert fake.runs_of(wf) == []


async def test_a_disabled_workflow_is_refused(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake, state="disabled_manually")
    with pytest.raises(SubmitRefused, match="disabled_manually"):
        await backend.submit(job_for(wf))


def test_labels_are_validated(fake: FakeGitHub, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path)
    backend.validate({"github_repository": "a/b", "github_workflow": "x.yml"})  # one instance
    assert backend.accepts({"github_workflow": "x.yml"}, None)
    assert not backend.accepts({"jenkins_project_name": "x"}, None)
    with pytest.raises(SpecRejected, match="github_instance"):
        backend.validate(
            {"github_instance": "other", "github_repository": "a/b", "github_workflow": "x"}
        )
    with pytest.raises(SpecRejected, match="github_repository"):
        backend.validate({"github_workflow": "x.yml"})
    with pytest.raises(SpecRejected, match="owner/repo"):
        backend.validate({"github_repository": "just-a-name", "github_workflow": "x.yml"})
    with pytest.raises(SpecRejected, match="github_workflow"):
        backend.validate({"github_repository": "a/b"})


# --------------------------------------------------------------------------- status


@pytest.mark.parametrize("waiting", ["queued", "requested", "pending", "waiting"])
async def test_waiting_statuses_are_queued(
    fake: FakeGitHub, backend: GitHubActionsBackend, waiting: str
) -> None:
    wf = new_workflow(fake, waiting_status=waiting, queue_delay=30)
    keys = await backend.submit(job_for(wf))
    report = await backend.status(keys)
    assert report.status is BackendStatus.QUEUED
    assert waiting in (report.message or "")
    await backend.stop(keys)  # a queued run can be cancelled
    assert (await final(backend, keys)).status is BackendStatus.ABORTED


async def test_in_progress_is_running(fake: FakeGitHub, backend: GitHubActionsBackend) -> None:
    wf = new_workflow(fake, jobs=[FakeJob("long", ["a"] * 40, line_interval=0.1)])
    keys = await backend.submit(job_for(wf))
    await until(backend, keys, BackendStatus.RUNNING)
    report = await backend.status(keys)
    assert report.url and report.url.endswith(f"/{REPO}/actions/runs/{keys['githubRunId']}")
    await backend.stop(keys, force=True)


@pytest.mark.parametrize(
    ("conclusion", "expected"),
    [
        ("success", BackendStatus.SUCCEEDED),
        ("cancelled", BackendStatus.ABORTED),
        ("failure", BackendStatus.FAILED),
        ("timed_out", BackendStatus.FAILED),
        ("startup_failure", BackendStatus.FAILED),
        ("action_required", BackendStatus.FAILED),
        ("neutral", BackendStatus.FAILED),
        ("stale", BackendStatus.FAILED),
    ],
)
async def test_conclusions_are_mapped(
    fake: FakeGitHub, backend: GitHubActionsBackend, conclusion: str, expected: BackendStatus
) -> None:
    wf = new_workflow(fake, jobs=[FakeJob("only", ["x"], conclusion)])
    keys = await backend.submit(job_for(wf))
    report = await final(backend, keys)
    assert report.status is expected
    if expected is BackendStatus.SUCCEEDED:
        assert report.message is None
    else:
        assert conclusion in (report.message or "")


# --------------------------------------------------------------------------- output


async def test_output_grows_job_by_job_while_the_run_runs(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(
        fake,
        jobs=[
            FakeJob("build", ["compile", "link"], line_interval=0.5),
            FakeJob("test", ["unit", "integration"], line_interval=0.5),
            FakeJob("deploy", ["push"], line_interval=0.5),
        ],
    )
    keys = await backend.submit(job_for(wf, {"GREETING": "hi"}))
    pieces: list[tuple[str, BackendStatus]] = []
    offset = 0
    for _ in range(300):
        chunk = await backend.output(keys, offset)
        assert chunk.next_offset >= offset
        if chunk.text:
            pieces.append((chunk.text, (await backend.status(keys)).status))
        offset = chunk.next_offset
        if not chunk.more:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("output never complete")
    text = "".join(p for p, _ in pieces)
    # job by job, in order, each after its header; no line lost or repeated
    assert [p.splitlines()[0] for p, _ in pieces] == [
        "=== job build (success) ===",
        "=== job test (success) ===",
        "=== job deploy (success) ===",
    ]
    assert pieces[0][1] is BackendStatus.RUNNING  # the first job's log came while running
    for line in ("GREETING=hi", "compile", "link", "unit", "integration", "push"):
        assert text.count(f" {line}\n") == 1
    assert "\ufeff" not in text
    assert offset == len(text.encode())
    whole = await backend.output(keys, 0)
    assert whole.text == text and not whole.more
    # each log was downloaded once, and the token never went to the download host
    runs_jobs = {j.id for j in fake.runs[int(keys["githubRunId"])].jobs}
    downloads = [r for r in fake.blob_requests if r["job_id"] in runs_jobs]
    assert len(downloads) == 3
    assert all(r["authorization"] is None for r in downloads)


async def test_polling_an_unchanged_run_is_answered_304(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake)
    keys = await backend.submit(job_for(wf))
    first = await final(backend, keys)
    whole = await backend.output(keys, 0)
    before = fake.not_modified
    # unchanged: GitHub answers 304 (free of rate limit), and ASCOB sees the same answers
    assert await backend.status(keys) == first
    assert await backend.output(keys, 0) == whole
    assert fake.not_modified - before == 3  # the run twice, its jobs once


async def test_output_from_an_offset_inside_a_job(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake, jobs=[FakeJob("a", ["één", "twee"]), FakeJob("b", ["drie"])])
    keys = await backend.submit(job_for(wf))
    await final(backend, keys)
    whole = (await backend.output(keys, 0)).text.encode()
    for offset in (0, 5, len(whole) // 2, len(whole) - 3, len(whole)):
        chunk = await backend.output(keys, offset)
        assert chunk.text.encode() == whole[offset:]
        assert chunk.next_offset == len(whole) and not chunk.more


async def test_failed_run_shows_the_failed_and_skipped_jobs(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake, jobs=[FakeJob("build", ["oops"], "failure"), FakeJob("deploy")])
    keys = await backend.submit(job_for(wf))
    assert (await final(backend, keys)).status is BackendStatus.FAILED
    chunk = await backend.output(keys, 0)
    assert "=== job build (failure) ===" in chunk.text
    assert "##[error]Process completed with exit code 1" in chunk.text
    assert chunk.text.endswith("=== job deploy (skipped) ===\n")
    assert not chunk.more


# --------------------------------------------------------------------------- stop


async def test_stop_cancels_the_run(fake: FakeGitHub, backend: GitHubActionsBackend) -> None:
    wf = new_workflow(fake, jobs=[FakeJob("forever", ["tick"], "HANG")])
    keys = await backend.submit(job_for(wf))
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys)
    report = await final(backend, keys)
    assert report.status is BackendStatus.ABORTED and "cancelled" in (report.message or "")
    assert fake.runs[int(keys["githubRunId"])].cancel_requests == ["cancel"]
    text = (await backend.output(keys, 0)).text
    assert "=== job forever (cancelled) ===" in text and "The operation was canceled" in text
    await backend.stop(keys)  # 409 "completed": nothing to do, no error


async def test_forced_stop_force_cancels_what_ignores_a_cancel(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake, jobs=[FakeJob("cleanup", ["tick"], "HANG", stubborn=True)])
    keys = await backend.submit(job_for(wf))
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys)
    await asyncio.sleep(0.5)
    assert (await backend.status(keys)).status is BackendStatus.RUNNING  # it ignored the cancel
    await backend.stop(keys, force=True)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    assert fake.runs[int(keys["githubRunId"])].cancel_requests == ["cancel", "force-cancel"]


# --------------------------------------------------------------------------- misbehaviour


@pytest.mark.parametrize("kind", ["500", "502", "503", "malformed", "hang"])
async def test_transient_errors_while_polling_are_unavailable_not_final(
    fake: FakeGitHub, backend: GitHubActionsBackend, kind: str
) -> None:
    wf = new_workflow(fake)
    keys = await backend.submit(job_for(wf))
    await final(backend, keys)
    run_path = rf"/actions/runs/{keys['githubRunId']}$"
    fake.faults.add("GET", run_path, kind, seconds=2)
    with pytest.raises(BackendUnavailable):
        await backend.status(keys)
    assert (await backend.status(keys)).status is BackendStatus.SUCCEEDED  # fault gone
    fake.faults.add("GET", rf"/actions/runs/{keys['githubRunId']}/jobs$", kind, seconds=2)
    with pytest.raises(BackendUnavailable):
        await backend.output(keys, 0)
    assert not (await backend.output(keys, 0)).more


async def test_an_unknown_status_value_is_unavailable_not_final(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake, waiting_status="brand_new_status", queue_delay=30)
    keys = await backend.submit(job_for(wf))
    with pytest.raises(BackendUnavailable, match="brand_new_status"):
        await backend.status(keys)
    await backend.stop(keys)


@pytest.mark.parametrize("kind", ["primary", "secondary"])
async def test_rate_limit_while_polling_backs_off(
    fake: FakeGitHub, backend: GitHubActionsBackend, kind: str
) -> None:
    wf = new_workflow(fake)
    keys = await backend.submit(job_for(wf))
    await final(backend, keys)
    fake.hits_while_limited = 0
    fake.limit_next("GET", r"/actions/runs/\d+$", kind, seconds=1.5)
    with pytest.raises(BackendUnavailable, match="rate limited"):
        await backend.status(keys)
    with pytest.raises(BackendUnavailable, match="rate limited"):
        await backend.output(keys, 0)  # not even sent: the client waits for the reset
    assert fake.hits_while_limited == 1
    deadline = time.monotonic() + 10
    while True:
        try:
            report = await backend.status(keys)
            break
        except BackendUnavailable:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    assert report.status is BackendStatus.SUCCEEDED
    assert fake.hits_while_limited == 1  # nothing was sent during the window


@pytest.mark.parametrize("kind", ["primary", "secondary"])
async def test_rate_limited_dispatch_waits_and_is_sent_once(
    fake: FakeGitHub, backend: GitHubActionsBackend, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wf = new_workflow(fake)
    fake.hits_while_limited = 0
    fake.limit_next("POST", r"/dispatches$", kind, seconds=1.2)
    keys = await backend.submit(job_for(wf))
    assert len(fake.runs_of(wf)) == 1 and keys["githubRunId"] == str(fake.runs_of(wf)[0].id)
    assert fake.hits_while_limited == 1
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    assert "rate limited" in caplog.text  # the wait is visible in the log...
    assert "github-secret" not in caplog.text  # ...the token is not


async def test_a_rate_limit_longer_than_allowed_refuses_the_dispatch(
    fake: FakeGitHub, tmp_path: Path
) -> None:
    backend = make_backend(fake, tmp_path, max_rate_limit_wait=0.5)
    wf = new_workflow(fake)
    fake.limit_next("GET", r"/repos/acme/deploys$", "primary", seconds=3)
    try:
        with pytest.raises(SubmitRefused, match="rate limited by GitHub"):
            await backend.submit(job_for(wf))
    finally:
        await backend.aclose()
    assert fake.runs_of(wf) == []
    await asyncio.sleep(3)  # let the window pass for the next tests


async def test_bad_credentials_refuse_with_github_message(fake: FakeGitHub, tmp_path: Path) -> None:
    os.environ["TEST_GITHUB_WRONG"] = "wrong"
    backend = make_backend(fake, tmp_path, token_env="TEST_GITHUB_WRONG")
    wf = new_workflow(fake)
    with pytest.raises(SubmitRefused, match=r"401.*Bad credentials"):
        await backend.submit(job_for(wf))
    await backend.aclose()
    assert fake.runs_of(wf) == []


async def test_missing_token_variable_refuses(fake: FakeGitHub, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path, token_env="TEST_GITHUB_UNSET_VARIABLE")
    with pytest.raises(SubmitRefused, match="TEST_GITHUB_UNSET_VARIABLE"):
        await backend.submit(job_for(new_workflow(fake)))


async def test_unknown_repository_and_workflow_refuse(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake)
    with pytest.raises(SubmitRefused, match=r"no repository acme/nothing.*Not Found"):
        await backend.submit(job_for(wf, github_repository="acme/nothing"))
    with pytest.raises(SubmitRefused, match=r"no workflow 'nope.yml'.*Not Found"):
        await backend.submit(job_for(wf, github_workflow="nope.yml"))


async def test_a_workflow_given_by_id_runs(fake: FakeGitHub, backend: GitHubActionsBackend) -> None:
    wf = new_workflow(fake)
    keys = await backend.submit(job_for(wf, github_workflow=str(wf.id)))
    assert keys["githubWorkflowId"] == str(wf.id)
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED


# --------------------------------------------------------------------------- lost answers


async def test_a_lost_dispatch_answer_is_found_again_by_run_name(
    fake: FakeGitHub, backend: GitHubActionsBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wf = new_workflow(fake, run_name="Deploy ${{ inputs.TARGET }} [${{ inputs.ascob_run }}]")
    fake.faults.add("POST", r"/dispatches$", "hang", seconds=3)
    keys = await backend.submit(job_for(wf, {"TARGET": "prod"}))
    runs = fake.runs_of(wf)
    assert len(runs) == 1  # sent once, and that run is the one found
    assert keys["githubRunId"] == str(runs[0].id)
    assert runs[0].title() == f"Deploy prod [{keys['githubCorrelation']}]"
    assert "found run" in caplog.text and "github-secret" not in caplog.text
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED


async def test_a_lost_answer_without_run_name_is_in_doubt_and_not_sent_again(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake, run_name=None)
    fake.faults.add("POST", r"/dispatches$", "hang", seconds=3)
    with pytest.raises(Exception) as info:
        await backend.submit(job_for(wf))
    assert isinstance(info.value, OutcomeUnknown)
    assert not isinstance(info.value, BackendError)  # neither refused nor transient: IN_DOUBT
    assert "run-name" in str(info.value)
    assert len(fake.runs_of(wf)) == 1  # GitHub did create it; ASCOB did not send it twice


async def test_a_5xx_dispatch_answer_is_looked_for_then_in_doubt(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake)
    fake.faults.add("POST", r"/dispatches$", "502")
    with pytest.raises(OutcomeUnknown, match="502"):
        await backend.submit(job_for(wf))
    assert fake.runs_of(wf) == []
    sent = [p for m, p in fake.requests if m == "POST" and f"/workflows/{wf.id}/dispatches" in p]
    assert len(sent) == 1  # looked for, never sent again


async def test_a_malformed_dispatch_answer_without_a_run_is_in_doubt(
    fake: FakeGitHub, backend: GitHubActionsBackend
) -> None:
    wf = new_workflow(fake)
    fake.faults.add("POST", r"/dispatches$", "malformed")  # answers without acting
    with pytest.raises(OutcomeUnknown):
        await backend.submit(job_for(wf))
    assert fake.runs_of(wf) == []


# --------------------------------------------------------------------------- older GHES


@pytest.mark.parametrize("mode", ["rejected", "ignored"])
async def test_older_ghes_without_run_details(tmp_path: Path, mode: str) -> None:
    ghes = FakeGitHub(ghes=True, run_details=mode).start()
    backend = make_backend(ghes, tmp_path, find_timeout=10)
    try:
        assert ghes.url.endswith("/api/v3")
        wf = ghes.add_workflow("corp/tools", "release.yml", appear_delay=0.6)
        first = await backend.submit(job_for(wf, run_id=1))
        second = await backend.submit(job_for(wf, run_id=2))
        runs = {str(r.id): r for r in ghes.runs_of(wf)}
        assert set(runs) == {first["githubRunId"], second["githubRunId"]}
        assert runs[first["githubRunId"]].inputs["ascob_run"] == first["githubCorrelation"]
        posts = [p for m, p in ghes.requests if m == "POST"]
        # rejected: refused once with the field, then sent without it from then on
        assert len(posts) == (3 if mode == "rejected" else 2)
        assert all(p.startswith("/api/v3/") for _, p in ghes.requests)
        for keys in (first, second):
            assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    finally:
        await backend.aclose()
        ghes.stop()


async def test_older_ghes_run_never_found_is_in_doubt(tmp_path: Path) -> None:
    ghes = FakeGitHub(ghes=True, run_details="ignored").start()
    backend = make_backend(ghes, tmp_path, find_timeout=1)
    try:
        wf = ghes.add_workflow("corp/tools", "slow.yml", appear_delay=5)
        with pytest.raises(OutcomeUnknown, match="without naming the run"):
            await backend.submit(job_for(wf))
        assert len(ghes.dispatches) == 1
    finally:
        await backend.aclose()
        ghes.stop()


# --------------------------------------------------------------------------- re-attach


async def test_a_new_process_reattaches_mid_run(fake: FakeGitHub, tmp_path: Path) -> None:
    wf = new_workflow(
        fake,
        jobs=[FakeJob("one", ["a"], line_interval=0.2), FakeJob("two", ["b"] * 5, "HANG")],
    )
    first = make_backend(fake, tmp_path)
    keys = await first.submit(job_for(wf))
    chunk = await first.output(keys, 0)
    for _ in range(100):
        if chunk.text:
            break
        await asyncio.sleep(0.05)
        chunk = await first.output(keys, 0)
    await first.aclose()
    again = make_backend(fake, tmp_path)  # a restarted ASCOB: only the keys survive
    try:
        assert (await again.status(dict(keys))).status is BackendStatus.RUNNING
        rest = await again.output(dict(keys), chunk.next_offset)
        assert rest.text == "" and rest.more  # job two still runs: nothing new, more to come
        await again.stop(dict(keys))
        assert (await final(again, dict(keys))).status is BackendStatus.ABORTED
        tail = await again.output(dict(keys), chunk.next_offset)
        assert tail.text.startswith("=== job two (cancelled) ===") and not tail.more
        assert len(fake.runs_of(wf)) == 1
    finally:
        await again.aclose()
