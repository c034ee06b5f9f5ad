"""Jenkins specifics, against the fake Jenkins on loopback: queue, crumbs, folders, results,
console offsets, stop/term/kill, merging, and what happens when Jenkins misbehaves."""

from __future__ import annotations

import asyncio
import os
import time
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
    JobNotFound,
    SpecRejected,
    SubmitRefused,
    SubmitUnknown,
)
from backends.jenkins import JenkinsBackend
from backends.jenkins.claims import QueueClaims
from tests.fakes.fake_jenkins import FakeJenkins
from tests.fakes.server import InProcess, free_port

TOKEN_ENV = "TEST_JENKINS_TOKEN"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeJenkins]:
    os.environ[TOKEN_ENV] = "jenkins-secret"
    server = FakeJenkins().start()  # also on loopback: some tests build backends without InProcess
    yield server
    server.stop()


def make_backend(fake: FakeJenkins, tmp_path: Path, **extra: Any) -> JenkinsBackend:
    instance = {"url": fake.url, "user": "ascob", "token_env": TOKEN_ENV, "timeout": 2, **extra}
    return JenkinsBackend(BackendContext(tmp_path, {"ci": instance}), InProcess(fake.server))


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


# --------------------------------------------------------------------------- jobs as they are

AS_IS = [{"GREETING": "none"}, {}]
AS_IS_IDS = ["parameters-without-ASCOB_RUN", "no-parameters"]


async def test_a_job_without_the_run_parameter_runs_as_it_is(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    path = new_job(fake, parameters={"GREETING": "none"}, queue_delay=0.3)
    keys = await backend.submit(job_for(path, {"GREETING": "hello"}))
    assert "jenkinsRunValue" not in keys
    assert (await backend.status(keys)).status is BackendStatus.QUEUED
    report = await final(backend, keys)
    assert report.status is BackendStatus.SUCCEEDED and report.message is None
    text = (await backend.output(keys, 0)).text
    assert "GREETING=hello" in text and text.endswith("step 2\nFinished: SUCCESS\n")
    assert "ASCOB_RUN" not in text
    [trigger] = fake.triggers_of(path)
    assert trigger.params == {"GREETING": "hello"} and not trigger.merged
    assert [b.params for b in fake.builds[path]] == [{"GREETING": "hello"}]


async def test_a_job_without_parameters_is_triggered_with_build(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    path = new_job(fake, parameters={})
    keys = await backend.submit(job_for(path))
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    assert (await backend.output(keys, 0)).text.endswith("Finished: SUCCESS\n")
    name = path.rsplit("/", 1)[1]
    posts = [p for m, p in fake.requests if m == "POST" and name in p]
    assert posts == [f"/job/team/job/{name}/build"]
    assert len(fake.builds[path]) == 1


async def test_a_job_without_parameters_given_parameters_is_refused(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    path = new_job(fake, parameters={})
    with pytest.raises(SubmitRefused, match=r"takes no parameters.*GREETING"):
        await backend.submit(job_for(path, {"GREETING": "hello"}))
    assert fake.triggers_of(path) == [] and fake.builds[path] == []


async def test_the_run_parameter_can_be_required(fake: FakeJenkins, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path, require_run_parameter=True)
    path = new_job(fake, parameters={"GREETING": "none"})
    with pytest.raises(SubmitRefused, match="does not declare the string parameter ASCOB_RUN"):
        await backend.submit(job_for(path))
    assert fake.triggers_of(path) == []
    await backend.aclose()


@pytest.mark.parametrize("parameters", AS_IS, ids=AS_IS_IDS)
async def test_identical_runs_without_the_run_parameter_get_their_own_builds(
    fake: FakeJenkins,
    backend: JenkinsBackend,
    parameters: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = new_job(fake, parameters=parameters, queue_delay=0.6)
    given = {k: "same" for k in parameters}
    caplog.set_level("WARNING", logger="backends.jenkins")
    # two executors' tasks dispatching at once, while the first item waits in the queue
    one, two = await asyncio.gather(
        backend.submit(job_for(path, given, run_id=41)),
        backend.submit(job_for(path, given, run_id=42)),
    )
    assert one["jenkinsQueueId"] != two["jenkinsQueueId"]
    first, second = (one, two) if "jenkinsRetriggered" in two else (two, one)
    assert "jenkinsRetriggered" not in first
    # what Jenkins saw: a trigger, a second one merged into its item, a third after it left
    new, merged, again = fake.triggers_of(path)
    assert not new.merged and merged.merged and merged.item_id == new.item_id
    assert not again.merged and again.item_id == int(second["jenkinsQueueId"])
    left_at = fake.item(new.item_id).left_at
    assert left_at is not None and again.at >= left_at
    # each run follows its own build to its end
    reports = [await final(backend, keys) for keys in (first, second)]
    assert all(r.status is BackendStatus.SUCCEEDED for r in reports)
    assert len(fake.builds[path]) == 2
    numbers = {b.queue_id: b.number for b in fake.builds[path]}
    assert reports[0].url and reports[0].url.endswith(f"/{numbers[new.item_id]}/")
    assert reports[1].url and reports[1].url.endswith(f"/{numbers[again.item_id]}/")
    # and the second run says what happened, in its message and in the log
    assert reports[0].message is None
    assert f"queue item {new.item_id}" in (reports[1].message or "")
    assert "triggered again" in (reports[1].message or "")
    assert any(f"merged the trigger into queue item {new.item_id}" in m for m in caplog.messages)


@pytest.mark.parametrize("sender", ["another-executor", "a-user"])
async def test_a_trigger_merged_into_a_request_from_elsewhere_is_sent_again(
    fake: FakeJenkins, tmp_path: Path, sender: str
) -> None:
    path = new_job(fake, parameters={"GREETING": "none"}, queue_delay=0.6)
    if sender == "a-user":  # someone clicked "Build" with the same values
        async with httpx.AsyncClient(auth=("ascob", "jenkins-secret")) as raw:
            crumb = (await raw.get(f"{fake.url}/crumbIssuer/api/json")).json()
            url = f"{fake.url}/job/{path.replace('/', '/job/')}/buildWithParameters"
            await raw.post(
                url, data={"GREETING": "same"}, headers={"Jenkins-Crumb": crumb["crumb"]}
            )
        other_keys = None
    else:  # an executor in another process: it shares nothing with this one
        other = make_backend(fake, tmp_path)
        other._claims = QueueClaims()
        other_keys = await other.submit(job_for(path, {"GREETING": "same"}, run_id=61))
        await other.aclose()
    backend = make_backend(fake, tmp_path)
    try:
        keys = await backend.submit(job_for(path, {"GREETING": "same"}, run_id=62))
        earlier, merged, again = fake.triggers_of(path)
        assert merged.merged and merged.item_id == earlier.item_id
        assert not again.merged and int(keys["jenkinsQueueId"]) == again.item_id
        assert "a request already in the queue" in keys["jenkinsRetriggered"]
        report = await final(backend, keys)
        assert report.status is BackendStatus.SUCCEEDED
        assert report.url and report.url.endswith("/2/")  # its own build, not the earlier one
        assert f"queue item {earlier.item_id}" in (report.message or "")
        if other_keys is not None:
            first = await final(backend, other_keys)
            assert first.url and first.url.endswith("/1/")
        assert len(fake.builds[path]) == 2
    finally:
        await backend.aclose()


async def test_a_merge_is_undone_while_jenkins_misbehaves(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    path = new_job(fake, parameters={}, queue_delay=0.6)
    fake.faults.add("GET", r"^/queue/api/json$", "500", times=3)  # no look at the queue
    fake.faults.add("GET", r"^/queue/item/\d+/api/json$", "malformed", times=2)
    one, two = await asyncio.gather(
        backend.submit(job_for(path, run_id=71)), backend.submit(job_for(path, run_id=72))
    )
    assert [t.merged for t in fake.triggers_of(path)] == [False, True, False]
    assert all(f.times == 0 for f in fake.faults.faults)  # every fault did happen
    assert one["jenkinsQueueId"] != two["jenkinsQueueId"]
    for keys in (one, two):
        assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    assert len(fake.builds[path]) == 2


async def test_a_merged_trigger_waits_a_bounded_time_then_is_refused(
    fake: FakeJenkins, tmp_path: Path
) -> None:
    backend = make_backend(fake, tmp_path, merge_wait=0.5)
    path = new_job(fake, parameters={}, queue_delay=4)
    try:
        first = await backend.submit(job_for(path, run_id=51))
        with pytest.raises(SubmitRefused, match=r"merged.*still waiting after 0.5 s.*ASCOB_RUN"):
            await backend.submit(job_for(path, run_id=52))
        assert [t.merged for t in fake.triggers_of(path)] == [False, True]  # no third trigger
        await backend.stop(first)  # cancel the waiting item
        assert (await final(backend, first)).status is BackendStatus.ABORTED
    finally:
        await backend.aclose()


@pytest.mark.parametrize("parameters", AS_IS, ids=AS_IS_IDS)
async def test_a_lost_trigger_answer_without_the_run_parameter_is_in_doubt(
    fake: FakeJenkins, backend: JenkinsBackend, parameters: dict[str, str]
) -> None:
    path = new_job(fake, parameters=parameters)
    fake.faults.add("POST", r"/build(WithParameters)?$", "hang", seconds=3)
    with pytest.raises(Exception) as info:
        await backend.submit(job_for(path))
    assert not isinstance(info.value, BackendError)  # neither refused nor transient: IN_DOUBT
    assert len(fake.triggers_of(path)) == 1  # sent once, never again
    async with httpx.AsyncClient(auth=("ascob", "jenkins-secret")) as raw:
        await raw.get(f"{fake.url}/queue/api/json")  # any request lets the fake's queue move
    assert len(fake.builds[path]) == 1  # and Jenkins did start it, exactly once


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


@pytest.mark.parametrize(
    "parameters", [{"ASCOB_RUN": "", "GREETING": "none"}, *AS_IS], ids=["ASCOB_RUN", *AS_IS_IDS]
)
async def test_build_found_again_after_jenkins_forgets_the_queue_item(
    fake: FakeJenkins, tmp_path: Path, parameters: dict[str, str]
) -> None:
    path = new_job(fake, parameters=parameters)
    first = make_backend(fake, tmp_path)
    await final(first, await first.submit(job_for(path, run_id=1)))
    keys = await first.submit(job_for(path, run_id=2))  # build #2, which must be found
    await final(first, keys)
    await first.aclose()
    fake.forget_after = 0.0
    try:
        await asyncio.sleep(0.05)
        again = make_backend(fake, tmp_path)  # a restarted ASCOB: no cache
        report = await again.status(keys)
        assert int(keys["jenkinsQueueId"]) not in fake.queue  # Jenkins did forget the item
        assert report.status is BackendStatus.SUCCEEDED
        assert report.url and report.url.endswith("/2/")
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


async def test_a_trigger_that_times_out_is_found_by_its_run_value(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    """Found by the soak: a lost trigger answer ended the run IN_DOUBT although the build that
    carries the run's unique ASCOB_RUN value can be looked for."""
    path = new_job(fake)
    fake.faults.add("POST", r"/buildWithParameters$", "hang", seconds=3)
    with pytest.raises(SubmitUnknown) as info:
        await backend.submit(job_for(path))
    keys = info.value.keys
    assert "jenkinsQueueId" not in keys and keys["jenkinsRunValue"].startswith("1-")
    # Jenkins queued it: the keys find it, in the queue or as a build, then to its end
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    assert len(fake.triggers_of(path)) == 1 and len(fake.builds[path]) == 1


async def test_a_queued_build_whose_trigger_answer_was_lost_is_found_in_the_queue(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    path = new_job(fake, queue_delay=30)
    fake.faults.add("POST", r"/buildWithParameters$", "hang", seconds=3)
    with pytest.raises(SubmitUnknown) as info:
        await backend.submit(job_for(path))
    assert (await backend.status(info.value.keys)).status is BackendStatus.QUEUED


async def test_a_5xx_trigger_is_looked_for_and_not_found(
    fake: FakeJenkins, backend: JenkinsBackend
) -> None:
    fake.faults.add("POST", r"/buildWithParameters$", "503")
    with pytest.raises(SubmitUnknown) as info:
        await backend.submit(job_for(new_job(fake)))
    with pytest.raises(JobNotFound):
        await backend.status(info.value.keys)  # nothing was queued: the run ends IN_DOUBT


def test_queue_claims_remember_who_got_an_item_until_it_has_left() -> None:
    claims = QueueClaims(ttl=60, grace=0.2)
    assert claims.claim("http://j/", 5, run_id=1, token="a") is None
    assert claims.claim("http://j", 5, run_id=1, token="a") is None  # the same submission
    owner = claims.claim("http://j", 5, run_id=2, token="b")
    assert owner is not None and owner.run_id == 1  # a merged trigger
    assert claims.claim("http://other", 5, run_id=2, token="b") is None  # another server
    claims.release("http://j", 5)
    assert claims.claim("http://j", 5, run_id=3, token="c") is not None  # still in its grace
    time.sleep(0.3)
    assert claims.claim("http://j", 5, run_id=3, token="c") is None
    assert QueueClaims(ttl=0).claim("http://j", 6, 1, "a") is None
    expiring = QueueClaims(ttl=0)
    expiring.claim("http://j", 6, 1, "a")
    assert expiring.claim("http://j", 6, 2, "b") is None  # past its ttl


def test_config_is_checked(tmp_path: Path) -> None:
    """A bad instance is refused with the reason; it no longer takes the others down."""
    bad = {
        "ci": {"url": "http://j", "require_run_parameter": "yes"},
        "ok": {"url": "http://k"},
    }
    backend = JenkinsBackend(BackendContext(tmp_path, bad))
    said = "require_run_parameter must be true or false"
    with pytest.raises(SpecRejected, match=said):
        backend.validate({"jenkins_instance": "ci", "jenkins_project_name": "x"})
    assert said in backend.broken_instances["ci"]
    backend.validate({"jenkins_instance": "ok", "jenkins_project_name": "x"})


async def test_an_unavailable_jenkins_is_unavailable_before_the_trigger(
    fake: FakeJenkins, backend: JenkinsBackend, tmp_path: Path
) -> None:
    """A 5xx or no answer before the trigger: nothing was queued, the job may be sent later
    (ASCOB sends it again for ASCOB_DISPATCH_RETRY_SECONDS)."""
    path = f"folder/job-{uuid.uuid4().hex[:6]}"
    fake.add_job(path, parameters={"ASCOB_RUN": ""})
    fake.faults.add("GET", rf"{path.rsplit('/', 1)[1]}/api/json$", "503")
    with pytest.raises(BackendUnavailable, match="503"):
        await backend.submit(job_for(path))
    assert fake.triggers_of(path) == []
    closed = make_backend(fake, tmp_path, url=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendUnavailable, match="ConnectError"):
            await closed.submit(job_for(path))
    finally:
        await closed.aclose()
    keys = await backend.submit(job_for(path))  # and once it answers, the job goes
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
