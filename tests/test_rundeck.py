"""Rundeck specifics, against the fake Rundeck served in-process (no socket): job lookup,
statuses, output offsets, abort, the API version, and what happens when Rundeck misbehaves."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

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
from backends.rundeck import RundeckBackend
from tests.fakes.fake_rundeck import FakeRundeck
from tests.fakes.server import InProcess, free_port

TOKEN_ENV = "TEST_RUNDECK_TOKEN"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeRundeck]:
    os.environ[TOKEN_ENV] = "rundeck-secret"
    yield FakeRundeck()  # served in-process: not started


def make_backend(fake: FakeRundeck, tmp_path: Path, **extra: Any) -> RundeckBackend:
    instance = {"url": fake.url, "token_env": TOKEN_ENV, "timeout": 2, **extra}
    return RundeckBackend(BackendContext(tmp_path, {"ops": instance}), InProcess(fake.server))


@pytest.fixture
async def backend(fake: FakeRundeck, tmp_path: Path) -> Any:
    b = make_backend(fake, tmp_path)
    yield b
    await b.aclose()
    fake.faults.clear()


def by_name(name: str, project: str = "ops") -> dict[str, str]:
    return {"rundeck_project_name": project, "rundeck_job_name": name}


def job_for(labels: dict[str, str], options: dict[str, str] | None = None) -> Job:
    return Job(1, "d", "u", labels, options or {}, "w")


def unique(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def final(backend: RundeckBackend, keys: dict[str, str]) -> Any:
    for _ in range(200):
        report = await backend.status(keys)
        if report.status.is_final:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"not final: {report}")


async def until(backend: RundeckBackend, keys: dict[str, str], wanted: BackendStatus) -> None:
    for _ in range(200):
        if (await backend.status(keys)).status is wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {wanted}")


# --------------------------------------------------------------------------- finding the job


async def test_job_by_exact_name_runs_with_its_options(
    fake: FakeRundeck, backend: RundeckBackend
) -> None:
    name = unique()
    fake.add_job("ops", name, required_options=("env",))
    fake.add_job("ops", f"{name}-other")  # a name that merely starts the same is not a match
    keys = await backend.submit(job_for(by_name(name), {"env": "prod"}))
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    assert "option env=prod" in (await backend.output(keys, 0)).text


async def test_job_by_id(fake: FakeRundeck, backend: RundeckBackend) -> None:
    job = fake.add_job("ops", unique())
    keys = await backend.submit(job_for({"rundeck_job_id": job.id}))
    assert keys["rundeckJobId"] == job.id
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED


async def test_no_job_of_that_name_is_refused(fake: FakeRundeck, backend: RundeckBackend) -> None:
    fake.add_job("ops", unique())
    with pytest.raises(SubmitRefused, match="no job named 'missing'"):
        await backend.submit(job_for(by_name("missing")))


async def test_several_jobs_of_that_name_are_refused_with_their_groups(
    fake: FakeRundeck, backend: RundeckBackend
) -> None:
    name = unique()
    fake.add_job("ops", name, group="blue")
    green = fake.add_job("ops", name, group="green")
    with pytest.raises(SubmitRefused, match=r"2 jobs named .*blue.*green"):
        await backend.submit(job_for(by_name(name)))
    keys = await backend.submit(job_for(by_name(f"green/{name}")))  # the group settles it
    assert keys["rundeckJobId"] == green.id


async def test_unknown_job_id_refused_with_rundeck_message(backend: RundeckBackend) -> None:
    with pytest.raises(SubmitRefused, match="Job ID does not exist: nope"):
        await backend.submit(job_for({"rundeck_job_id": "nope"}))


async def test_missing_required_option_refused_with_rundeck_message(
    fake: FakeRundeck, backend: RundeckBackend
) -> None:
    name = unique()
    fake.add_job("ops", name, required_options=("env",))
    with pytest.raises(SubmitRefused, match="Option 'env' is required"):
        await backend.submit(job_for(by_name(name)))


def test_labels_are_validated(fake: FakeRundeck, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path)
    backend.validate({"rundeck_job_id": "x"})
    with pytest.raises(SpecRejected, match="rundeck_job_id"):
        backend.validate({"rundeck_project_name": "ops"})
    with pytest.raises(SpecRejected, match="not configured"):
        backend.validate({"rundeck_instance": "elsewhere", "rundeck_job_id": "x"})


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("final_status", "expected"),
    [
        ("succeeded", BackendStatus.SUCCEEDED),
        ("failed", BackendStatus.FAILED),
        ("timedout", BackendStatus.FAILED),
        ("aborted", BackendStatus.ABORTED),
        ("incomplete", BackendStatus.FAILED),
        ("other", BackendStatus.FAILED),
    ],
)
async def test_final_statuses_are_mapped(
    fake: FakeRundeck, backend: RundeckBackend, final_status: str, expected: BackendStatus
) -> None:
    name = unique()
    fake.add_job("ops", name, final=final_status, custom_status="needs-review")
    keys = await backend.submit(job_for(by_name(name)))
    report = await final(backend, keys)
    assert report.status is expected
    if final_status == "other":
        assert "needs-review" in (report.message or "")


async def test_scheduled_then_running(fake: FakeRundeck, backend: RundeckBackend) -> None:
    name = unique()
    fake.add_job("ops", name, scheduled_delay=0.5, final="HANG")
    keys = await backend.submit(job_for(by_name(name)))
    assert (await backend.status(keys)).status is BackendStatus.QUEUED
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED


@pytest.mark.parametrize(
    ("retry_final", "expected"), [("succeeded", "SUCCEEDED"), ("failed", "FAILED")]
)
async def test_failed_with_retry_follows_the_retry(
    fake: FakeRundeck, backend: RundeckBackend, retry_final: str, expected: str
) -> None:
    name = unique()
    fake.add_job("ops", name, final="failed-with-retry", retry_final=retry_final)
    keys = await backend.submit(job_for(by_name(name)))
    report = await final(backend, keys)
    assert report.status is BackendStatus(expected)
    first = fake.executions[int(keys["rundeckExecutionId"])]
    assert first.retry is not None and str(first.retry.id) in (report.url or "")


async def test_force_abort_asks_rundeck_to_force(
    fake: FakeRundeck, backend: RundeckBackend
) -> None:
    name = unique()
    fake.add_job("ops", name, final="HANG")
    keys = await backend.submit(job_for(by_name(name)))
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys, force=True)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    assert ("POST", f"/api/41/execution/{keys['rundeckExecutionId']}/abort") in fake.requests


async def test_output_comes_in_pieces_with_offsets(
    fake: FakeRundeck, backend: RundeckBackend
) -> None:
    name = unique()
    fake.add_job("ops", name, lines=[f"line {i}" for i in range(10)], line_interval=0.05)
    keys = await backend.submit(job_for(by_name(name)))
    pieces, offset = [], 0
    for _ in range(200):
        chunk = await backend.output(keys, offset)
        pieces.append(chunk.text)
        offset = chunk.next_offset
        if not chunk.more:
            break
        await asyncio.sleep(0.05)
    assert len([p for p in pieces if p]) > 2
    run_value = f"option ASCOB_RUN={keys['rundeckRunValue']}\n"
    assert "".join(pieces) == run_value + "".join(f"line {i}\n" for i in range(10))
    assert (await backend.output(keys, offset)).text == ""


# --------------------------------------------------------------------------- API version, errors


async def test_api_version_is_configurable(fake: FakeRundeck, tmp_path: Path) -> None:
    name = unique()
    fake.add_job("ops", name)
    backend = make_backend(fake, tmp_path, api_version=18)
    keys = await backend.submit(job_for(by_name(name)))
    await final(backend, keys)
    await backend.aclose()
    assert ("POST", f"/api/18/job/{keys['rundeckJobId']}/run") in fake.requests


async def test_an_unsupported_api_version_is_refused_clearly(
    fake: FakeRundeck, tmp_path: Path
) -> None:
    backend = make_backend(fake, tmp_path, api_version=99)
    with pytest.raises(SubmitRefused, match="Unsupported API Version"):
        await backend.submit(job_for({"rundeck_job_id": "x"}))
    await backend.aclose()


async def test_bad_token_refused_with_rundeck_message(fake: FakeRundeck, tmp_path: Path) -> None:
    os.environ["TEST_RUNDECK_WRONG"] = "wrong"
    backend = make_backend(fake, tmp_path, token_env="TEST_RUNDECK_WRONG")
    with pytest.raises(SubmitRefused, match="not authorized"):
        await backend.submit(job_for({"rundeck_job_id": "x"}))
    await backend.aclose()


@pytest.mark.parametrize("kind", ["500", "503", "malformed", "hang"])
async def test_transient_errors_while_polling_are_unavailable_not_final(
    fake: FakeRundeck, backend: RundeckBackend, kind: str
) -> None:
    name = unique()
    fake.add_job("ops", name)
    keys = await backend.submit(job_for(by_name(name)))
    await final(backend, keys)
    fake.faults.add("GET", r"/execution/\d+$", kind, seconds=3)
    with pytest.raises(BackendUnavailable):
        await backend.status(keys)
    assert (await backend.status(keys)).status is BackendStatus.SUCCEEDED


async def test_every_run_carries_a_unique_run_value(
    fake: FakeRundeck, backend: RundeckBackend
) -> None:
    job = fake.add_job("ops", unique())
    first = await backend.submit(job_for({"rundeck_job_id": job.id}, {"env": "prod"}))
    second = await backend.submit(job_for({"rundeck_job_id": job.id}, {"env": "prod"}))
    assert first["rundeckRunValue"].startswith("1-")
    assert first["rundeckRunValue"] != second["rundeckRunValue"]
    execution = fake.executions[int(first["rundeckExecutionId"])]
    assert execution.options == {"env": "prod", "ASCOB_RUN": first["rundeckRunValue"]}


async def test_a_lost_answer_is_found_by_the_run_value(
    fake: FakeRundeck, backend: RundeckBackend
) -> None:
    """Found by the soak: the answer to a run request is lost, but Rundeck started the job; the
    execution that carries the run value is the run's (never a second one started)."""
    job = fake.add_job("ops", unique())
    fake.faults.add("POST", r"/run$", "hang", seconds=3)
    with pytest.raises(SubmitUnknown) as info:
        await backend.submit(job_for({"rundeck_job_id": job.id}))
    keys = info.value.keys
    assert "rundeckExecutionId" not in keys and keys["rundeckJobId"] == job.id
    for _ in range(3):  # other runs of the same job meanwhile
        await backend.submit(job_for({"rundeck_job_id": job.id}))
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    started = [e for e in fake.executions.values() if e.job is job]
    ours = [e for e in started if e.options.get("ASCOB_RUN") == keys["rundeckRunValue"]]
    assert len(started) == 4 and len(ours) == 1
    assert f"ASCOB_RUN={keys['rundeckRunValue']}" in (await backend.output(keys, 0)).text


async def test_a_lost_answer_is_looked_for_beyond_the_first_page(
    fake: FakeRundeck, backend: RundeckBackend
) -> None:
    job = fake.add_job("ops", unique())
    fake.faults.add("POST", r"/run$", "503")
    with pytest.raises(SubmitUnknown) as info:  # a 5xx: Rundeck may or may not have started it
        await backend.submit(job_for({"rundeck_job_id": job.id}))
    with pytest.raises(JobNotFound):  # this one did not
        await backend.status(info.value.keys)
    fake.faults.add("POST", r"/run$", "hang", seconds=3)
    with pytest.raises(SubmitUnknown) as info:
        await backend.submit(job_for({"rundeck_job_id": job.id}))
    for _ in range(60):
        await backend.submit(job_for({"rundeck_job_id": job.id}))
    report = await final(backend, info.value.keys)
    assert report.status is BackendStatus.SUCCEEDED


async def test_without_a_run_option_a_lost_answer_is_unknown(
    fake: FakeRundeck, tmp_path: Path
) -> None:
    backend = make_backend(fake, tmp_path, run_option="")
    job = fake.add_job("ops", unique())
    fake.faults.add("POST", r"/run$", "hang", seconds=3)
    try:
        with pytest.raises(Exception) as info:
            await backend.submit(job_for({"rundeck_job_id": job.id}))
    finally:
        await backend.aclose()
    assert not isinstance(info.value, BackendError)  # IN_DOUBT, never retried
    started = [e for e in fake.executions.values() if e.job is job]
    assert len(started) == 1 and started[0].options == {}  # Rundeck did start it


async def test_an_unavailable_rundeck_is_unavailable_before_the_run_request(
    fake: FakeRundeck, backend: RundeckBackend, tmp_path: Path
) -> None:
    """A 5xx or no answer before the run request: nothing was started, the job may be sent
    later (ASCOB sends it again for ASCOB_DISPATCH_RETRY_SECONDS)."""
    name = unique()
    job = fake.add_job("ops", name)
    fake.faults.add("GET", r"/project/ops/jobs$", "503")
    with pytest.raises(BackendUnavailable, match="503"):
        await backend.submit(job_for(by_name(name)))
    closed = make_backend(fake, tmp_path)
    closed.instances["ops"] = replace(
        closed.instances["ops"], url=f"http://127.0.0.1:{free_port()}"
    )
    try:
        with pytest.raises(BackendUnavailable, match="cannot"):
            await closed.submit(job_for({"rundeck_job_id": job.id}))
    finally:
        await closed.aclose()
    assert not [e for e in fake.executions.values() if e.job is job]
    keys = await backend.submit(job_for(by_name(name)))
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
