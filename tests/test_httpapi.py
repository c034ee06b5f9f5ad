"""``httpBackend`` against the home-grown job service on loopback: parameters through templates,
the status table, both output styles, stop and forced stop, faults while polling, configuration
and template errors, refusals at start, lost start answers (with and without an idempotency
header), job ids from ``Location``, and re-attaching from a new registry."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from backends import (
    BACKEND_ID_LABEL,
    Backend,
    BackendContext,
    BackendError,
    BackendRegistry,
    BackendStatus,
    BackendUnavailable,
    Job,
    JobNotFound,
    OutcomeUnknown,
    SpecRejected,
    StatusReport,
    SubmitRefused,
)
from backends.httpapi import HttpBackend, UnknownVariable
from backends.httpapi.templates import JsonPath, TemplateError, render, url_value
from tests.contract.httpapi import instance
from tests.fakes.fake_http_service import FakeHttpService
from tests.fakes.server import InProcess

TOKEN = "service-secret"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeHttpService]:
    os.environ["CONTRACT_HTTP_TOKEN"] = TOKEN
    server = FakeHttpService(token=TOKEN).start()
    yield server
    server.stop()


def merged(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def config(fake: FakeHttpService, task: str, **extra: Any) -> dict[str, Any]:
    """The contract's instance for ``task``, changed by ``extra`` (None removes a key); the
    body also passes the GREETING parameter."""
    base = instance(fake.url, task)
    base["timeout"] = 1
    base["start"]["retry_pause"] = 0.1
    base["start"]["body"]["params"] = {"GREETING": "{param.GREETING}"}
    return merged(base, extra)


def make(fake: FakeHttpService, tmp_path: Path, **instances: dict[str, Any]) -> HttpBackend:
    return HttpBackend(BackendContext(tmp_path, instances), InProcess(fake.server))


@pytest.fixture
def task(fake: FakeHttpService) -> str:
    name = f"task-{uuid.uuid4().hex[:6]}"
    fake.add_task(name)
    return name


def job(instance_name: str = "svc", params: dict[str, str] | None = None) -> Job:
    return Job(
        run_id=int(uuid.uuid4().int % 10**6),
        description="d",
        submitter="u",
        labels={"http_instance": instance_name},
        parameters={"GREETING": "hi"} if params is None else params,
        webhook_id=uuid.uuid4().hex,
    )


async def final(backend: Backend, keys: Mapping[str, str]) -> StatusReport:
    for _ in range(300):
        report = await backend.status(keys)
        if report.status.is_final:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"not final: {report}")


async def until(backend: Backend, keys: Mapping[str, str], wanted: BackendStatus) -> None:
    for _ in range(300):
        if (await backend.status(keys)).status is wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {wanted}")


# --------------------------------------------------------------------------- templates


def test_template_values_are_url_encoded_and_never_evaluated() -> None:
    values = {"param.WHO": "a b/c?d=1&e#f", "run_id": "7"}
    assert render("/x/{param.WHO}/{run_id}", values, url_value) == "/x/a%20b%2Fc%3Fd%3D1%26e%23f/7"
    # not str.format: braces that are not a variable stay, attribute access is no variable
    assert render("{run_id[0]} {} { run_id } {0}", values, url_value) == (
        "{run_id[0]} {} { run_id } {0}"
    )
    with pytest.raises(TemplateError, match=r"\{run_id\.__class__\}"):
        render("{run_id.__class__}", values, url_value)


def test_json_paths() -> None:
    data = {"data": {"job": {"id": 5}}, "items": [{"id": "a"}, {"id": "b"}]}
    assert JsonPath("data.job.id").find(data) == 5
    assert JsonPath("items[1].id").find(data) == "b"
    assert JsonPath("[0]").find(["x"]) == "x"
    with pytest.raises(LookupError, match="items"):
        JsonPath("items[2].id").find(data)
    for bad in ("", "a..b", ".a", "a[x]", "a["):
        with pytest.raises(ValueError):
            JsonPath(bad)


# --------------------------------------------------------------------------- parameters


async def test_parameters_and_run_id_arrive_through_the_templates(
    fake: FakeHttpService, task: str, tmp_path: Path
) -> None:
    backend = make(fake, tmp_path, svc=config(fake, task))
    the_job = job(params={"GREETING": 'he said "hi" {run_id} \\ ünïcode'})
    keys = await backend.submit(the_job)
    (made,) = fake.jobs_of(task)
    assert made.params == {"GREETING": 'he said "hi" {run_id} \\ ünïcode'}  # a value, verbatim
    assert made.ref == str(the_job.run_id)
    assert keys == {"httpInstance": "svc", "httpJobId": made.id, "httpRunId": str(the_job.run_id)}
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    assert 'GREETING=he said "hi"' in (await backend.output(keys, 0)).text
    await backend.aclose()


async def test_a_missing_parameter_refuses_the_job_before_any_request(
    fake: FakeHttpService, task: str, tmp_path: Path
) -> None:
    backend = make(fake, tmp_path, svc=config(fake, task))
    with pytest.raises(UnknownVariable, match=r"\{param\.GREETING\}.*its parameters: OTHER") as e:
        await backend.submit(job(params={"OTHER": "x"}))
    assert isinstance(e.value, SpecRejected) and isinstance(e.value, SubmitRefused)  # run FAILED
    assert fake.jobs_of(task) == []
    await backend.aclose()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"start": {"url": "{base}/jobs?x={foo}"}}, "{foo}"),
        ({"start": {"body": {"task": "{job_id}"}}}, "{job_id}"),
        ({"status": {"url": "{base}/jobs/{param.X}"}}, "{param.X}"),
        ({"headers": {"X-Token": "{env.NOT_LISTED}"}}, "{env.NOT_LISTED}"),
        ({"start": {"body": {"token": "{env.CONTRACT_HTTP_TOKEN}"}}}, "{env.CONTRACT_HTTP_TOKEN}"),
        ({"stop": {"url": "{base}/jobs/{job_id}/cancel?at={offset}"}}, "{offset}"),
    ],
)
def test_a_template_naming_an_unknown_variable_is_a_400(
    fake: FakeHttpService, task: str, tmp_path: Path, extra: dict[str, Any], named: str
) -> None:
    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value.replace("{base}", fake.url) if isinstance(value, str) else value

    registry = BackendRegistry.load(
        tmp_path, {"http": {"bad": config(fake, task, **fill(extra)), "good": config(fake, task)}}
    )
    assert registry.states and all(s.state == "loaded" for s in registry.states)
    with pytest.raises(SpecRejected, match=r"\[http\.bad\.") as info:
        registry.select({"http_instance": "bad", BACKEND_ID_LABEL: "httpBackend"}, None)
    assert named in str(info.value) and "unknown variable" in str(info.value)
    registry.select({"http_instance": "good", BACKEND_ID_LABEL: "httpBackend"}, None)  # unharmed


def test_labels_are_validated(fake: FakeHttpService, task: str, tmp_path: Path) -> None:
    two = make(fake, tmp_path, a=config(fake, task), b=config(fake, task))
    with pytest.raises(SpecRejected, match="http_instance is required"):
        two.validate({})
    with pytest.raises(SpecRejected, match="'elsewhere' is not configured"):
        two.validate({"http_instance": "elsewhere"})
    make(fake, tmp_path, only=config(fake, task)).validate({})  # one instance: label optional


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("final_word", "expected", "message"),
    [
        ("ok", BackendStatus.SUCCEEDED, None),
        ("error", BackendStatus.FAILED, "step 2 exited with 3"),
        ("cancelled", BackendStatus.ABORTED, "cancelled"),
        ("killed", BackendStatus.ABORTED, "killed"),
    ],
)
async def test_final_values_are_mapped(
    fake: FakeHttpService,
    tmp_path: Path,
    final_word: str,
    expected: BackendStatus,
    message: str | None,
) -> None:
    name = f"final-{uuid.uuid4().hex[:6]}"
    fake.add_task(name, final=final_word)
    backend = make(fake, tmp_path, svc=config(fake, name))
    report = await final(backend, await backend.submit(job()))
    assert report.status is expected
    if message is not None:
        assert message in (report.message or "")
    await backend.aclose()


async def test_waiting_is_queued_then_working_is_running(
    fake: FakeHttpService, tmp_path: Path
) -> None:
    name = f"slow-{uuid.uuid4().hex[:6]}"
    fake.add_task(name, queue_delay=0.6, final="HANG")
    backend = make(
        fake,
        tmp_path,
        svc=config(fake, name, status={"web_url": "http://ui.example/jobs/{job_id}"}),
    )
    keys = await backend.submit(job())
    first = await backend.status(keys)
    assert first.status is BackendStatus.QUEUED
    assert first.url == f"http://ui.example/jobs/{keys['httpJobId']}"
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys, force=True)
    await backend.aclose()


async def test_an_unknown_value_keeps_polling_with_the_value_in_the_message(
    fake: FakeHttpService, tmp_path: Path
) -> None:
    name = f"odd-{uuid.uuid4().hex[:6]}"
    fake.add_task(name, final="paused")
    backend = make(fake, tmp_path, svc=config(fake, name))
    keys = await backend.submit(job())
    for _ in range(100):
        try:
            await backend.status(keys)
        except BackendUnavailable as exc:
            assert "'paused'" in str(exc) and "[http.svc.status] map" in str(exc)
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the unknown value was never reported")
    await backend.aclose()


# --------------------------------------------------------------------------- output


async def read_live(backend: HttpBackend, keys: Mapping[str, str]) -> tuple[str, list[str]]:
    text, offset, chunks = "", 0, []
    for _ in range(400):
        chunk = await backend.output(keys, offset)
        assert chunk.next_offset >= offset
        if chunk.text:
            chunks.append(chunk.text)
        text, offset = text + chunk.text, chunk.next_offset
        if not chunk.more:
            return text, chunks
        await asyncio.sleep(0.05)
    raise AssertionError(f"output never ended: {text!r}")


@pytest.mark.parametrize(
    "output",
    [
        {"url": "{base}/jobs/{job_id}/log?offset={offset}"},
        {"url": None, "path": "job.log"},  # the whole text in the status answer
    ],
    ids=["log-by-offset", "json-path"],
)
async def test_output_grows_while_the_job_runs(
    fake: FakeHttpService, tmp_path: Path, output: dict[str, Any]
) -> None:
    name = f"long-{uuid.uuid4().hex[:6]}"
    lines = [f"line {i} é" for i in range(8)]
    fake.add_task(name, lines=lines, line_interval=0.25)
    url = output.get("url")
    section = {**output, "url": url.replace("{base}", fake.url) if url else None}
    backend = make(fake, tmp_path, svc=merged(config(fake, name), {"output": section}))
    keys = await backend.submit(job())
    text, chunks = await read_live(backend, keys)
    assert len(chunks) >= 3  # it arrived piece by piece, not all at the end
    whole = await backend.output(keys, 0)
    assert text == whole.text == "GREETING=hi\n" + "".join(f"{line}\n" for line in lines)
    assert not whole.more and whole.next_offset == len(whole.text.encode())
    rest = await backend.output(keys, whole.next_offset)
    assert rest.text == "" and not rest.more
    await backend.aclose()


async def test_no_output_section_means_no_output(
    fake: FakeHttpService, task: str, tmp_path: Path
) -> None:
    backend = make(fake, tmp_path, svc=config(fake, task, output=None))
    keys = await backend.submit(job())
    chunk = await backend.output(keys, 0)
    assert chunk.text == "" and not chunk.more
    await backend.aclose()


# --------------------------------------------------------------------------- stop


async def test_stop_cancels_and_forced_stop_kills_a_stubborn_job(
    fake: FakeHttpService, tmp_path: Path
) -> None:
    name = f"stubborn-{uuid.uuid4().hex[:6]}"
    fake.add_task(name, final="HANG", stubborn=True)
    backend = make(fake, tmp_path, svc=config(fake, name))
    keys = await backend.submit(job())
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys)
    await asyncio.sleep(0.5)
    assert (await backend.status(keys)).status is BackendStatus.RUNNING  # it ignored the cancel
    await backend.stop(keys, force=True)
    report = await final(backend, keys)
    assert report.status is BackendStatus.ABORTED and "killed" in (report.message or "")
    (made,) = fake.jobs_of(name)
    assert made.cancel_requests == ["cancel", "force"]
    await backend.stop(keys)  # already over: the service's 409 is not an error
    await backend.aclose()


async def test_clean_stop_aborts_and_force_falls_back_to_stop(
    fake: FakeHttpService, tmp_path: Path
) -> None:
    name = f"hang-{uuid.uuid4().hex[:6]}"
    fake.add_task(name, final="HANG")
    backend = make(fake, tmp_path, svc=config(fake, name, force_stop=None))
    keys = await backend.submit(job())
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys, force=True)  # no force_stop configured: the stop request
    report = await final(backend, keys)
    assert report.status is BackendStatus.ABORTED and "cancelled" in (report.message or "")
    assert fake.jobs_of(name)[0].cancel_requests == ["cancel"]
    await backend.aclose()


async def test_a_failing_stop_is_transient(fake: FakeHttpService, tmp_path: Path) -> None:
    name = f"hang-{uuid.uuid4().hex[:6]}"
    fake.add_task(name, final="HANG")
    backend = make(fake, tmp_path, svc=config(fake, name))
    keys = await backend.submit(job())
    fake.faults.add("POST", r"/cancel$", "503")
    with pytest.raises(BackendUnavailable, match="stop: HTTP 503"):
        await backend.stop(keys)
    await backend.stop(keys)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    await backend.aclose()


# --------------------------------------------------------------------------- faults while polling


async def test_faults_while_polling_are_transient(fake: FakeHttpService, tmp_path: Path) -> None:
    name = f"faulty-{uuid.uuid4().hex[:6]}"
    fake.add_task(name, lines=["a", "b", "c"], line_interval=0.2)
    backend = make(fake, tmp_path, svc=config(fake, name))
    keys = await backend.submit(job())
    path = rf"/jobs/{keys['httpJobId']}$"
    for kind, seen in [("500", "HTTP 500"), ("502", "HTTP 502"), ("malformed", "not JSON")]:
        fake.faults.add("GET", path, kind)
        with pytest.raises(BackendUnavailable, match=seen):
            await backend.status(keys)
    fake.faults.add("GET", path, "hang", seconds=2)
    with pytest.raises(BackendUnavailable, match="Timeout"):
        await backend.status(keys)
    fake.faults.add("GET", rf"/jobs/{keys['httpJobId']}/log$", "503")
    with pytest.raises(BackendUnavailable, match="output: HTTP 503"):
        await backend.output(keys, 0)
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    await backend.aclose()


async def test_an_unknown_job_is_not_found(
    fake: FakeHttpService, task: str, tmp_path: Path
) -> None:
    backend = make(fake, tmp_path, svc=config(fake, task))
    keys = {"httpInstance": "svc", "httpJobId": "j-nope", "httpRunId": "1"}
    with pytest.raises(JobNotFound, match="no job 'j-nope'"):
        await backend.status(keys)
    await backend.aclose()


# --------------------------------------------------------------------------- refusals at start


async def test_bad_credentials_refuse_the_job_with_the_service_answer(
    fake: FakeHttpService, task: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.environ["TEST_HTTP_WRONG"] = "wrong-token-value"
    wrong = config(
        fake,
        task,
        secret_env=["TEST_HTTP_WRONG"],
        headers={"Authorization": "Bearer {env.TEST_HTTP_WRONG}"},
    )
    backend = make(fake, tmp_path, svc=wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SubmitRefused, match=r"HTTP 401: .*unauthorized") as info:
        await backend.submit(job())
    assert "wrong-token-value" not in str(info.value) + caplog.text
    assert fake.jobs_of(task) == []
    await backend.aclose()


async def test_a_missing_secret_variable_refuses_the_job(
    fake: FakeHttpService, task: str, tmp_path: Path
) -> None:
    unset = config(
        fake,
        task,
        secret_env=["TEST_HTTP_UNSET"],
        headers={"Authorization": "Bearer {env.TEST_HTTP_UNSET}"},
    )
    backend = make(fake, tmp_path, svc=unset)
    with pytest.raises(SubmitRefused, match=r"TEST_HTTP_UNSET .* is not set"):
        await backend.submit(job())
    await backend.aclose()


async def test_a_4xx_at_start_is_refused_with_the_answer_truncated(
    fake: FakeHttpService, tmp_path: Path
) -> None:
    long_name = "no-such-task-" + "x" * 2000
    backend = make(fake, tmp_path, svc=config(fake, long_name))
    with pytest.raises(SubmitRefused, match=r"HTTP 422: .*unknown task 'no-such-task-xxx") as info:
        await backend.submit(job())
    assert len(str(info.value)) < 500 and str(info.value).endswith("…")
    await backend.aclose()


async def test_an_answer_without_the_job_id_is_refused(
    fake: FakeHttpService, task: str, tmp_path: Path
) -> None:
    backend = make(fake, tmp_path, svc=config(fake, task, start={"job_id": "job.uuid"}))
    with pytest.raises(SubmitRefused, match=r'no job id at job\.uuid: .*"task":"task-'):
        await backend.submit(job())
    await backend.aclose()


async def test_job_id_from_the_location_header(
    fake: FakeHttpService, task: str, tmp_path: Path
) -> None:
    located = config(fake, task, start={"job_id": None, "job_id_header": "Location"})
    backend = make(fake, tmp_path, svc=located)
    keys = await backend.submit(job())
    (made,) = fake.jobs_of(task)
    assert keys["httpJobId"] == made.id
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    missing = config(fake, task, start={"job_id": None, "job_id_header": "X-Job"})
    other = make(fake, tmp_path, svc=missing)
    with pytest.raises(SubmitRefused, match="no X-Job header"):
        await other.submit(job())
    await backend.aclose()
    await other.aclose()


async def test_an_unreachable_service_refuses_the_job(
    fake: FakeHttpService, task: str, tmp_path: Path
) -> None:
    from tests.fakes.server import free_port

    nowhere = config(fake, task, start={"url": f"http://127.0.0.1:{free_port()}/jobs"})
    backend = make(fake, tmp_path, svc=nowhere)
    with pytest.raises(SubmitRefused, match="cannot connect"):
        await backend.submit(job())
    await backend.aclose()


# --------------------------------------------------------------------------- lost answers


@pytest.mark.parametrize("kind", ["hang", "503"])
async def test_a_lost_answer_with_idempotency_key_is_retried_and_makes_one_job(
    fake: FakeHttpService, tmp_path: Path, kind: str
) -> None:
    name = f"idem-{uuid.uuid4().hex[:6]}"
    fake.add_task(name)
    backend = make(fake, tmp_path, svc=config(fake, name))
    fake.faults.add("POST", r"^/jobs$", kind, seconds=2)
    before = len(fake.start_attempts)
    the_job = job()
    keys = await backend.submit(the_job)
    (made,) = fake.jobs_of(name)  # one job, although the start was sent twice
    assert keys["httpJobId"] == made.id
    sent = fake.start_attempts[before:]
    assert sent == [HttpBackend.idempotency_key(the_job)] * 2  # the same key both times
    assert made.idempotency_key == HttpBackend.idempotency_key(the_job)
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    await backend.aclose()


async def test_retries_with_idempotency_key_are_bounded(
    fake: FakeHttpService, tmp_path: Path
) -> None:
    name = f"down-{uuid.uuid4().hex[:6]}"
    fake.add_task(name)
    backend = make(fake, tmp_path, svc=config(fake, name, start={"attempts": 3}))
    fake.faults.add("POST", r"^/jobs$", "502", times=5)
    with pytest.raises(OutcomeUnknown, match=r"HTTP 502.*after 3 tries; outcome unknown"):
        await backend.submit(job())
    fake.faults.clear()
    assert fake.jobs_of(name) == []
    await backend.aclose()


async def test_a_refusal_after_a_lost_answer_is_in_doubt(
    fake: FakeHttpService, tmp_path: Path
) -> None:
    name = f"refused-retry-{uuid.uuid4().hex[:6]}"
    fake.add_task(name)
    backend = make(fake, tmp_path, svc=config(fake, name))
    fake.faults.add("POST", r"^/jobs$", "hang", seconds=2)  # made the job, answer lost
    fake.faults.add("POST", r"^/jobs$", "422")  # the retry is refused: not proof of no job
    with pytest.raises(OutcomeUnknown, match=r"retry answered HTTP 422.*outcome unknown"):
        await backend.submit(job())
    assert len(fake.jobs_of(name)) == 1
    await backend.aclose()


@pytest.mark.parametrize("kind", ["hang", "503"])
async def test_a_lost_answer_without_idempotency_key_is_in_doubt(
    fake: FakeHttpService, tmp_path: Path, kind: str
) -> None:
    name = f"doubt-{uuid.uuid4().hex[:6]}"
    fake.add_task(name)
    plain = config(fake, name, start={"idempotency_header": None})
    backend = make(fake, tmp_path, svc=plain)
    fake.faults.add("POST", r"^/jobs$", kind, seconds=2)
    before = len(fake.start_attempts)
    with pytest.raises(OutcomeUnknown, match="outcome unknown") as info:
        await backend.submit(job())
    assert not isinstance(info.value, BackendError)  # ASCOB: IN_DOUBT, never sent again
    assert fake.start_attempts[before:] == [None]  # sent once, no key
    assert len(fake.jobs_of(name)) == (1 if kind == "hang" else 0)  # hang: it did start, once
    await backend.aclose()


# --------------------------------------------------------------------------- re-attach


async def test_a_new_registry_reattaches_through_the_keys(
    fake: FakeHttpService, tmp_path: Path
) -> None:
    name = f"reattach-{uuid.uuid4().hex[:6]}"
    fake.add_task(name, lines=["a", "b", "c"], line_interval=0.2)
    settings = {"http": {"svc": config(fake, name)}}
    first = BackendRegistry.load(tmp_path, settings)
    keys = await first.get("httpBackend").submit(job())
    await first.aclose()
    second = BackendRegistry.load(tmp_path, settings)  # nothing shared but the keys
    again = second.get("httpBackend")
    assert (await final(again, dict(keys))).status is BackendStatus.SUCCEEDED
    assert (await again.output(dict(keys), 0)).text.endswith("a\nb\nc\n")
    assert len(fake.jobs_of(name)) == 1
    await second.aclose()
