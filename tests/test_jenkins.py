"""Jenkins specifics, against the fake Jenkins on loopback: queue, crumbs, folders, results,
console offsets, stop/term/kill, merging, and what happens when Jenkins misbehaves."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends import (
    BackendContext,
    BackendError,
    BackendStatus,
    BackendUnavailable,
    Job,
    SpecRejected,
    SubmitRefused,
)
from backends.jenkins import JenkinsBackend
from tests.fakes.fake_jenkins import FakeJenkins

TOKEN_ENV = "TEST_JENKINS_TOKEN"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeJenkins]:
    os.environ[TOKEN_ENV] = "jenkins-secret"
    server = FakeJenkins().start()
    yield server
    server.stop()


def make_backend(fake: FakeJenkins, tmp_path: Path, **extra: Any) -> JenkinsBackend:
    instance = {"url": fake.url, "user": "ascob", "token_env": TOKEN_ENV, "timeout": 2, **extra}
    return JenkinsBackend(BackendContext(tmp_path, {"ci": instance}))


@pytest.fixture
async def backend(fake: FakeJenkins, tmp_path: Path) -> Any:
    b = make_backend(fake, tmp_path)
    yield b
    await b.aclose()
    fake.faults.clear()


def new_job(fake: FakeJenkins, folder: str = "team", **kwargs: Any) -> str:
    path = f"{folder}/job-{uuid.uuid4().hex[:6]}"
    kwargs.setdefault("parameters", {"ASCOB_RUN": "", "GREETING": "none"})
    fake.add_job(path, **kwargs)
    return path


def job_for(path: str, parameters: dict[str, str] | None = None, run_id: int = 1) -> Job:
    return Job(run_id, "d", "u", {"jenkins_project_name": path}, parameters or {}, "w")


async def final(backend: JenkinsBackend, keys: dict[str, str]) -> Any:
    for _ in range(200):
        report = await backend.status(keys)
        if report.status.is_final:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"not final: {report}")


async def until_running(backend: JenkinsBackend, keys: dict[str, str]) -> None:
    for _ in range(200):
        if (await backend.status(keys)).status is BackendStatus.RUNNING:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never RUNNING")


async def test_follows_the_queue_item_to_the_build_in_a_folder(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    path = new_job(fake, folder="a/b", queue_delay=0.6)
    keys = await backend.submit(job_for(path))
    report = await backend.status(keys)
    assert report.status is BackendStatus.QUEUED and "quiet period" in (report.message or "")
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    build = fake.builds[path][0]
    assert build.params["ASCOB_RUN"] == keys["jenkinsRunValue"]
    assert ("POST", f"/job/a/job/b/job/{path.rsplit('/', 1)[1]}/buildWithParameters") in (
        fake.requests
    )


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ("SUCCESS", BackendStatus.SUCCEEDED),
        ("ABORTED", BackendStatus.ABORTED),
        ("FAILURE", BackendStatus.FAILED),
        ("UNSTABLE", BackendStatus.FAILED),
        ("NOT_BUILT", BackendStatus.FAILED),
    ],
)
async def test_results_are_mapped(
    fake: FakeJenkins, backend: JenkinsBackend, result: str, expected: BackendStatus
) -> None:
    keys = await backend.submit(job_for(new_job(fake, result=result)))
    report = await final(backend, keys)
    assert report.status is expected
    assert report.url and report.url.endswith("/1/")


async def test_a_cancelled_queue_item_ends_aborted(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    keys = await backend.submit(job_for(new_job(fake, cancel_in_queue=True, queue_delay=0.2)))
    report = await final(backend, keys)
    assert report.status is BackendStatus.ABORTED
    assert "queue" in (report.message or "")


@pytest.mark.parametrize("crumbs", [True, False], ids=["crumbs-on", "crumbs-off"])
async def test_crumb_sent_only_when_the_server_issues_them(tmp_path: Path, crumbs: bool) -> None:
    fake = FakeJenkins(crumbs=crumbs).start()
    backend = make_backend(fake, tmp_path)
    try:
        keys = await backend.submit(job_for(new_job(fake)))
        assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
        assert ("GET", "/crumbIssuer/api/json") in fake.requests
    finally:
        await backend.aclose()
        fake.stop()


async def test_identical_queued_requests_get_their_own_builds(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    path = new_job(fake, queue_delay=0.5)
    # Jenkins merges identical waiting requests: the fake does too, as this shows
    async with httpx.AsyncClient(auth=("ascob", "jenkins-secret")) as raw:
        crumb = (await raw.get(f"{fake.url}/crumbIssuer/api/json")).json()
        headers = {crumb["crumbRequestField"]: crumb["crumb"]}
        url = f"{fake.url}/job/{path.replace('/', '/job/')}/buildWithParameters"
        one = await raw.post(url, data={"GREETING": "x"}, headers=headers)
        two = await raw.post(url, data={"GREETING": "x"}, headers=headers)
        assert one.headers["location"] == two.headers["location"]
    # ASCOB's identical runs are not merged
    first = await backend.submit(job_for(path, {"GREETING": "x"}, run_id=7))
    second = await backend.submit(job_for(path, {"GREETING": "x"}, run_id=7))
    await final(backend, first)
    await final(backend, second)
    numbers = {fake.builds[path][i].params["ASCOB_RUN"] for i in range(len(fake.builds[path]))}
    assert {first["jenkinsRunValue"], second["jenkinsRunValue"]} <= numbers
    assert len(fake.builds[path]) == 3  # the merged raw pair, then one build per ASCOB run


async def test_a_job_without_the_run_parameter_is_refused(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    path = new_job(fake, parameters={"GREETING": "none"})
    with pytest.raises(SubmitRefused, match="ASCOB_RUN"):
        await backend.submit(job_for(path))
    assert fake.builds[path] == [] and not any(
        p.endswith("buildWithParameters") for _, p in fake.requests if path.split("/")[1] in p
    )


async def test_console_is_read_progressively(fake: FakeJenkins, backend: JenkinsBackend) -> None:
    lines = [f"line {i}" for i in range(12)]
    keys = await backend.submit(job_for(new_job(fake, lines=lines, line_interval=0.05)))
    pieces, offset = [], 0
    while True:
        chunk = await backend.output(keys, offset)
        pieces.append(chunk.text)
        offset = chunk.next_offset
        if not chunk.more:
            break
        await asyncio.sleep(0.05)
    text = "".join(pieces)
    assert len([p for p in pieces if p]) > 2  # it came in several pieces
    assert text.endswith("line 11\nFinished: SUCCESS\n")
    assert offset == len(text.encode())


async def test_clean_stop_posts_stop(fake: FakeJenkins, backend: JenkinsBackend) -> None:
    path = new_job(fake, result="HANG")
    keys = await backend.submit(job_for(path))
    await until_running(backend, keys)
    await backend.stop(keys)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    assert fake.builds[path][0].actions == ["stop"]


async def test_force_stop_terms_then_kills(fake: FakeJenkins, backend: JenkinsBackend) -> None:
    path = new_job(fake, result="HANG", pipeline=True, stubborn=True)
    keys = await backend.submit(job_for(path))
    await until_running(backend, keys)
    await backend.stop(keys, force=True)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    assert fake.builds[path][0].actions == ["term", "kill"]


async def test_build_found_again_after_jenkins_forgets_the_queue_item(
    fake: FakeJenkins, tmp_path: Path
) -> None:
    path = new_job(fake)
    first = make_backend(fake, tmp_path)
    keys = await first.submit(job_for(path))
    await final(first, keys)
    await first.aclose()
    fake.forget_after = 0.0
    try:
        await asyncio.sleep(0.05)
        again = make_backend(fake, tmp_path)  # a restarted ASCOB: no cache
        assert (await again.status(keys)).status is BackendStatus.SUCCEEDED
        await again.aclose()
    finally:
        fake.forget_after = 300.0


# --------------------------------------------------------------------------- misbehaviour


async def test_bad_credentials_refuse_with_jenkins_message(
    fake: FakeJenkins, tmp_path: Path
) -> None:
    os.environ["TEST_JENKINS_WRONG"] = "wrong"
    backend = make_backend(fake, tmp_path, token_env="TEST_JENKINS_WRONG")
    with pytest.raises(SubmitRefused, match=r"401.*Unauthorized"):
        await backend.submit(job_for(new_job(fake)))
    await backend.aclose()


async def test_missing_token_variable_refuses(fake: FakeJenkins, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path, token_env="TEST_JENKINS_UNSET_VARIABLE")
    with pytest.raises(SubmitRefused, match="TEST_JENKINS_UNSET_VARIABLE"):
        await backend.submit(job_for(new_job(fake)))


async def test_unknown_job_refuses(backend: JenkinsBackend) -> None:
    with pytest.raises(SubmitRefused, match="no such job"):
        await backend.submit(job_for("nowhere/nothing"))


def test_labels_are_validated(fake: FakeJenkins, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path)
    backend.validate({"jenkins_project_name": "a/b"})  # one instance: the label may be left out
    with pytest.raises(SpecRejected, match="jenkins_instance"):
        backend.validate({"jenkins_instance": "other", "jenkins_project_name": "a"})
    with pytest.raises(SpecRejected, match="jenkins_project_name"):
        backend.validate({"jenkins_instance": "ci"})


@pytest.mark.parametrize("kind", ["500", "502", "malformed", "hang"])
async def test_transient_errors_while_polling_are_unavailable_not_final(
    fake: FakeJenkins, backend: JenkinsBackend, kind: str
) -> None:
    path = new_job(fake)
    keys = await backend.submit(job_for(path))
    await final(backend, keys)
    fake.faults.add("GET", r"/\d+/api/json$", kind, seconds=3)
    with pytest.raises(BackendUnavailable):
        await backend.status(keys)
    assert (await backend.status(keys)).status is BackendStatus.SUCCEEDED  # fault gone


async def test_a_trigger_that_times_out_has_an_unknown_outcome(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    path = new_job(fake)
    fake.faults.add("POST", r"/buildWithParameters$", "hang", seconds=3)
    with pytest.raises(Exception) as info:
        await backend.submit(job_for(path))
    assert not isinstance(info.value, BackendError)  # neither refused nor transient: IN_DOUBT
    # and indeed Jenkins queued it
    assert any(item.job.path == path for item in fake.queue.values())


async def test_a_5xx_trigger_has_an_unknown_outcome(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    fake.faults.add("POST", r"/buildWithParameters$", "503")
    with pytest.raises(Exception) as info:
        await backend.submit(job_for(new_job(fake)))
    assert not isinstance(info.value, BackendError)
