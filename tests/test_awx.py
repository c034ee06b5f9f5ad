"""AWX / AAP specifics, against the fake AWX on loopback: templates by id and name, extra_vars,
ignored variables, statuses, output from job events, cancel, workflows, lost launch answers, and
what happens when AWX misbehaves."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from backends import (
    Backend,
    BackendContext,
    BackendError,
    BackendRegistry,
    BackendStatus,
    BackendUnavailable,
    Job,
    OutcomeUnknown,
    SpecRejected,
    StatusReport,
    SubmitRefused,
)
from backends.awx import AwxBackend
from tests.fakes.fake_awx import FakeAwx
from tests.fakes.server import InProcess

TOKEN_ENV = "TEST_AWX_TOKEN"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAwx]:
    os.environ[TOKEN_ENV] = "awx-secret"
    server = FakeAwx().start()  # also on loopback: some tests build backends without InProcess
    yield server
    server.stop()


def config(fake: FakeAwx, **extra: Any) -> dict[str, Any]:
    return {"url": fake.url, "token_env": TOKEN_ENV, "timeout": 2, **extra}


def make_backend(fake: FakeAwx, tmp_path: Path, **extra: Any) -> AwxBackend:
    context = BackendContext(tmp_path, {"prod": config(fake, **extra)})
    backend = AwxBackend(context, InProcess(fake.server))
    backend.recovery_waits = (0.2,)
    return backend


@pytest.fixture
async def backend(fake: FakeAwx, tmp_path: Path) -> Any:
    b = make_backend(fake, tmp_path)
    yield b
    await b.aclose()
    fake.faults.clear()


def unique(prefix: str = "tpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def job_for(
    labels: Mapping[str, str], params: Mapping[str, str] | None = None, run: int = 1
) -> Job:
    return Job(run, "d", "u", dict(labels), dict(params or {}), "w")


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
        await asyncio.sleep(0.02)
    raise AssertionError(f"never {wanted}")


async def read_all(backend: Backend, keys: Mapping[str, str]) -> tuple[list[str], int]:
    pieces, offset = [], 0
    for _ in range(600):
        chunk = await backend.output(keys, offset)
        assert chunk.next_offset >= offset
        pieces.append(chunk.text)
        offset = chunk.next_offset
        if not chunk.more:
            return pieces, offset
        await asyncio.sleep(0.03)
    raise AssertionError(f"output never complete: {pieces}")


# --------------------------------------------------------------------------- launching


async def test_parameters_arrive_as_extra_vars_with_the_correlation_variable(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    template = fake.add_template(unique())
    keys = await backend.submit(job_for({"awx_job_template": template.name}, {"env": "prod"}, 42))
    (launch,) = fake.launches_of(template)
    assert launch["extra_vars"]["env"] == "prod"
    assert launch["extra_vars"]["ascob_run"] == keys["awxRunValue"]
    assert keys["awxRunValue"].startswith("42-")
    assert keys["awxJobId"] == str(launch["job"]) and keys["awxKind"] == "job"
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    assert "env=prod" in (await backend.output(keys, 0)).text


async def test_template_by_numeric_id(fake: FakeAwx, backend: AwxBackend) -> None:
    template = fake.add_template(unique())
    keys = await backend.submit(job_for({"awx_job_template": str(template.id)}))
    assert keys["awxTemplateId"] == str(template.id)
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED


async def test_run_variable_is_configurable(fake: FakeAwx, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path, run_variable="portal_ref")
    template = fake.add_template(unique())
    keys = await backend.submit(job_for({"awx_job_template": template.name}))
    await backend.aclose()
    assert fake.launches_of(template)[0]["extra_vars"]["portal_ref"] == keys["awxRunValue"]


async def test_unknown_template_name_is_refused(backend: AwxBackend) -> None:
    with pytest.raises(SubmitRefused, match="no job template named 'missing'"):
        await backend.submit(job_for({"awx_job_template": "missing"}))


async def test_unknown_template_id_is_refused_with_awx_message(backend: AwxBackend) -> None:
    with pytest.raises(SubmitRefused, match=r"no job template 999999 \(Not found.\)"):
        await backend.submit(job_for({"awx_job_template": "999999"}))


async def test_several_templates_of_that_name_are_refused_and_listed(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    name = unique()
    first = fake.add_template(name, organization="Blue")
    second = fake.add_template(name, organization="Green")
    with pytest.raises(SubmitRefused) as info:
        await backend.submit(job_for({"awx_job_template": name}))
    message = str(info.value)
    assert f"id {first.id} (organization Blue)" in message
    assert f"id {second.id} (organization Green)" in message
    assert not fake.launches_of(first) and not fake.launches_of(second)


async def test_bad_credentials_are_refused_with_awx_message(fake: FakeAwx, tmp_path: Path) -> None:
    os.environ["TEST_AWX_WRONG"] = "not-the-token"
    backend = make_backend(fake, tmp_path, token_env="TEST_AWX_WRONG")
    template = fake.add_template(unique())
    with pytest.raises(SubmitRefused, match=r"401.*Authentication credentials were not provided"):
        await backend.submit(job_for({"awx_job_template": template.name}))
    await backend.aclose()
    assert not fake.launches_of(template)


async def test_missing_token_variable_is_refused(fake: FakeAwx, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path, token_env="TEST_AWX_NEVER_SET")
    with pytest.raises(SubmitRefused, match="TEST_AWX_NEVER_SET"):
        await backend.submit(job_for({"awx_job_template": "x"}))


def test_labels_are_validated(fake: FakeAwx, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path)
    backend.validate({"awx_job_template": "deploy"})
    backend.validate({"awx_instance": "prod", "awx_workflow_template": "7"})
    with pytest.raises(SpecRejected, match="awx_job_template or awx_workflow_template"):
        backend.validate({"awx_instance": "prod"})
    with pytest.raises(SpecRejected, match="not both"):
        backend.validate({"awx_job_template": "a", "awx_workflow_template": "b"})
    with pytest.raises(SpecRejected, match="not configured"):
        backend.validate({"awx_instance": "elsewhere", "awx_job_template": "x"})
    assert backend.accepts({"awx_workflow_template": "x"}, None)
    assert not backend.accepts({"jenkins_project_name": "x"}, None)


# --------------------------------------------------------------------------- ignored variables


async def test_template_that_does_not_prompt_is_refused_before_launching(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    template = fake.add_template(unique(), ask_variables_on_launch=False)
    with pytest.raises(SubmitRefused, match=r"does not prompt for variables.*Prompt on launch"):
        await backend.submit(job_for({"awx_job_template": template.name}, {"env": "prod"}))
    assert not fake.launches_of(template)


async def test_ignored_variables_cancel_the_created_job_and_fail(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    # a survey asks for env only: AWX drops the rest into ignored_fields and creates the job
    template = fake.add_template(
        unique(), ask_variables_on_launch=False, survey=("env",), final="HANG", pending_delay=1
    )
    with pytest.raises(SubmitRefused) as info:
        await backend.submit(job_for({"awx_job_template": template.name}, {"env": "p", "x": "1"}))
    message = str(info.value)
    (launch,) = fake.launches_of(template)
    assert "AWX ignored extra_vars (x, ascob_run)" in message
    assert "Prompt on launch" in message
    assert f"ASCOB canceled AWX job {launch['job']}, which AWX had already created" in message
    assert fake.jobs[launch["job"]].canceled_at is not None


async def test_workflow_refusing_variables_is_refused_with_awx_message(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    step = fake.add_template(unique())
    flow = fake.add_template(
        unique("wf"),
        kind="workflow_job",
        nodes=[step.id],
        ask_variables_on_launch=False,
        survey=("env",),
    )
    with pytest.raises(SubmitRefused, match="Variables ascob_run are not allowed on launch"):
        await backend.submit(job_for({"awx_workflow_template": flow.name}, {"env": "p"}))
    assert not fake.launches_of(flow)


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("awx_final", "expected", "explanation"),
    [
        ("successful", BackendStatus.SUCCEEDED, ""),
        ("failed", BackendStatus.FAILED, ""),
        ("error", BackendStatus.FAILED, "Job terminated due to error"),
    ],
)
async def test_final_statuses_are_mapped(
    fake: FakeAwx,
    backend: AwxBackend,
    awx_final: str,
    expected: BackendStatus,
    explanation: str,
) -> None:
    template = fake.add_template(unique(), final=awx_final, job_explanation=explanation)
    keys = await backend.submit(job_for({"awx_job_template": template.name}))
    report = await final(backend, keys)
    assert report.status is expected
    assert report.url and report.url.endswith(f"/#/jobs/playbook/{keys['awxJobId']}/output")
    if expected is BackendStatus.FAILED:
        assert f"AWX job {keys['awxJobId']}: {awx_final}" in (report.message or "")
        assert explanation in (report.message or "")
    else:
        assert report.message is None


async def test_pending_waiting_then_running(fake: FakeAwx, backend: AwxBackend) -> None:
    template = fake.add_template(unique(), pending_delay=1.0, final="HANG")
    keys = await backend.submit(job_for({"awx_job_template": template.name}))
    job = fake.jobs[int(keys["awxJobId"])]
    seen = set()
    for _ in range(200):
        awx_status = job.state(time.time())[0]
        report = await backend.status(keys)
        seen.add((awx_status, report.status))
        if report.status is BackendStatus.RUNNING:
            break
        await asyncio.sleep(0.02)
    assert ("pending", BackendStatus.QUEUED) in seen
    assert ("waiting", BackendStatus.QUEUED) in seen
    assert any(s is BackendStatus.RUNNING for _, s in seen)
    await backend.stop(keys)
    report = await final(backend, keys)
    assert report.status is BackendStatus.ABORTED
    assert "canceled" in (report.message or "")


async def test_an_unknown_status_is_unavailable_not_final(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    template = fake.add_template(unique(), final="mystery")
    keys = await backend.submit(job_for({"awx_job_template": template.name}))
    await asyncio.sleep(0.6)
    with pytest.raises(BackendUnavailable, match="mystery"):
        await backend.status(keys)


# --------------------------------------------------------------------------- stop


@pytest.mark.parametrize("force", [False, True], ids=["clean", "forced"])
async def test_stop_cancels_a_running_job(fake: FakeAwx, backend: AwxBackend, force: bool) -> None:
    lines = [f"TASK [t{i}]" for i in range(20)]
    template = fake.add_template(unique(), final="HANG", lines=lines, line_interval=0.2)
    keys = await backend.submit(job_for({"awx_job_template": template.name}))
    await until(backend, keys, BackendStatus.RUNNING)
    for _ in range(100):
        if "TASK [t0]" in (await backend.output(keys, 0)).text:
            break
        await asyncio.sleep(0.05)
    await backend.stop(keys, force=force)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    cancels = [
        r for r in fake.requests if r == ("POST", f"/api/v2/jobs/{keys['awxJobId']}/cancel/")
    ]
    assert len(cancels) == 1  # a forced stop is AWX's one cancel too
    chunk = await backend.output(keys, 0)
    assert "TASK [t0]" in chunk.text and "TASK [t19]" not in chunk.text and not chunk.more


async def test_stop_while_pending_and_after_the_end(fake: FakeAwx, backend: AwxBackend) -> None:
    template = fake.add_template(unique(), pending_delay=2.0)
    keys = await backend.submit(job_for({"awx_job_template": template.name}))
    await backend.stop(keys, force=True)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    await backend.stop(keys)  # AWX answers 405 for an ended job: nothing to do, no error
    assert (await backend.status(keys)).status is BackendStatus.ABORTED


# --------------------------------------------------------------------------- output


async def test_output_grows_while_the_job_runs_and_is_complete_only_when_events_are(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    template = fake.add_template(
        unique(),
        lines=[f"TASK [line {i}]" for i in range(12)],
        line_interval=0.08,
        late_event=4,  # saved only once event processing ends: a gap while running
        event_lag=0.8,
    )
    keys = await backend.submit(job_for({"awx_job_template": template.name}, {"env": "prod"}))
    pieces, offset = await read_all(backend, keys)
    whole = await backend.output(keys, 0)
    assert not whole.more and whole.next_offset == offset == len(whole.text.encode())
    assert "".join(pieces) == whole.text  # nothing lost, repeated or moved across offsets
    assert len([p for p in pieces if p]) > 3  # it came in pieces, while the job ran
    assert "\x1b" not in whole.text  # ANSI colours removed, as format=txt does
    expected_lines = [
        "PLAY [ascob] ****",
        f"ascob_run={keys['awxRunValue']}",
        "env=prod",
        *[f"TASK [line {i}]" for i in range(12)],
        "PLAY RECAP ****\r\nlocalhost : ok=2",
    ]
    assert whole.text == "".join(f"{line}\n" for line in expected_lines)
    rest = await backend.output(keys, offset)
    assert rest.text == "" and not rest.more


async def test_output_is_not_complete_until_event_processing_finishes(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    template = fake.add_template(unique(), event_lag=1.5)
    keys = await backend.submit(job_for({"awx_job_template": template.name}))
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    assert (await backend.output(keys, 0)).more  # the job ended; its events are still saved
    _, offset = await read_all(backend, keys)
    assert offset > 0


async def test_output_from_any_offset_in_a_new_process(
    fake: FakeAwx, backend: AwxBackend, tmp_path: Path
) -> None:
    template = fake.add_template(unique(), lines=["é" * 3, "TASK [end]"])
    keys = await backend.submit(job_for({"awx_job_template": template.name}))
    await final(backend, keys)
    pieces, size = await read_all(backend, keys)
    whole = "".join(pieces).encode()
    at = whole.index(b"TASK [end]")  # a byte offset: the "é"s before it take two bytes each
    fresh = make_backend(fake, tmp_path)  # no checkpoints: reads from the start
    tail = await fresh.output(keys, at)
    await fresh.aclose()
    assert tail.text == whole[at:].decode() and tail.text.startswith("TASK [end]\n")
    assert tail.next_offset == size and not tail.more


# --------------------------------------------------------------------------- misbehaving AWX


@pytest.mark.parametrize("kind", ["500", "502", "503", "malformed", "hang"])
async def test_transient_errors_while_polling_are_unavailable_not_final(
    fake: FakeAwx, backend: AwxBackend, kind: str
) -> None:
    template = fake.add_template(unique())
    keys = await backend.submit(job_for({"awx_job_template": template.name}))
    await final(backend, keys)
    fake.faults.add("GET", rf"/jobs/{keys['awxJobId']}/$", kind, seconds=3)
    with pytest.raises(BackendUnavailable):
        await backend.status(keys)
    assert (await backend.status(keys)).status is BackendStatus.SUCCEEDED
    fake.faults.add("GET", rf"/jobs/{keys['awxJobId']}/job_events/$", kind, seconds=3)
    with pytest.raises(BackendUnavailable):
        await backend.output(keys, 0)
    assert "TASK [step 2]" in (await backend.output(keys, 0)).text


async def test_an_expired_token_while_polling_is_unavailable(fake: FakeAwx, tmp_path: Path) -> None:
    template = fake.add_template(unique())
    good = make_backend(fake, tmp_path)
    keys = await good.submit(job_for({"awx_job_template": template.name}))
    await good.aclose()
    os.environ["TEST_AWX_EXPIRED"] = "expired"
    stale = make_backend(fake, tmp_path, token_env="TEST_AWX_EXPIRED")
    with pytest.raises(BackendUnavailable, match="401"):
        await stale.status(keys)
    await stale.aclose()


# --------------------------------------------------------------------------- lost launch answer


async def test_a_lost_launch_answer_finds_the_job_again(fake: FakeAwx, backend: AwxBackend) -> None:
    template = fake.add_template(unique())
    fake.faults.add("POST", r"/launch/$", "hang", seconds=3)  # AWX launches; the answer is late
    keys = await backend.submit(job_for({"awx_job_template": template.name}, {"env": "prod"}))
    (launch,) = fake.launches_of(template)  # launched exactly once
    assert keys["awxJobId"] == str(launch["job"])
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED


async def test_a_found_job_that_lost_variables_is_canceled_and_fails(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    # the survey takes ascob_run but not env: AWX ignored env; the answer saying so was lost
    template = fake.add_template(
        unique(), ask_variables_on_launch=False, survey=("ascob_run",), final="HANG"
    )
    fake.faults.add("POST", r"/launch/$", "hang", seconds=3)
    with pytest.raises(SubmitRefused, match=r"AWX ignored extra_vars \(env\)") as info:
        await backend.submit(job_for({"awx_job_template": template.name}, {"env": "prod"}))
    (launch,) = fake.launches_of(template)
    assert f"canceled AWX job {launch['job']}" in str(info.value)
    assert fake.jobs[launch["job"]].canceled_at is not None


@pytest.mark.parametrize("kind", ["500", "502", "malformed"])
async def test_a_launch_without_a_job_to_find_is_in_doubt(
    fake: FakeAwx, backend: AwxBackend, kind: str
) -> None:
    template = fake.add_template(unique())
    fake.faults.add("POST", r"/launch/$", kind)  # answered without launching
    with pytest.raises(OutcomeUnknown, match="not launched again") as info:
        await backend.submit(job_for({"awx_job_template": template.name}))
    assert not isinstance(info.value, BackendError)  # IN_DOUBT, never a refusal
    assert not fake.launches_of(template)  # and never sent a second time


async def test_two_jobs_carrying_the_value_are_in_doubt(
    fake: FakeAwx, backend: AwxBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = fake.add_template(unique())
    fixed = uuid.UUID(int=7)
    monkeypatch.setattr("backends.awx.uuid.uuid4", lambda: fixed)
    await backend.submit(job_for({"awx_job_template": template.name}, run=5))
    fake.faults.add("POST", r"/launch/$", "hang", seconds=3)
    with pytest.raises(OutcomeUnknown, match="several jobs"):
        await backend.submit(job_for({"awx_job_template": template.name}, run=5))
    assert len(fake.launches_of(template)) == 2


# --------------------------------------------------------------------------- workflows


async def test_workflow_runs_its_nodes_and_serves_their_output_in_order(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    build = fake.add_template(unique("build"), lines=["TASK [compile]"])
    deploy = fake.add_template(unique("deploy"), lines=["TASK [ship]"], event_lag=0.3)
    flow = fake.add_template(unique("wf"), kind="workflow_job", nodes=[build.id, deploy.id])
    keys = await backend.submit(job_for({"awx_workflow_template": str(flow.id)}, {"env": "prod"}))
    assert keys["awxKind"] == "workflow_job"
    pieces, _ = await read_all(backend, keys)
    report = await final(backend, keys)
    assert report.status is BackendStatus.SUCCEEDED
    assert report.url and report.url.endswith(f"/#/jobs/workflow/{keys['awxJobId']}/output")
    whole = (await backend.output(keys, 0)).text
    assert "".join(pieces) == whole
    assert whole.index(f": {build.name} =====") < whole.index("TASK [compile]")
    assert whole.index("TASK [compile]") < whole.index(f": {deploy.name} =====")
    assert whole.index(f": {deploy.name} =====") < whole.index("TASK [ship]")
    assert whole.count("env=prod") == 2  # the workflow's extra_vars reached both nodes


async def test_workflow_with_a_failing_node_fails_with_its_explanation(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    bad = fake.add_template(unique("bad"), final="failed")
    never = fake.add_template(unique("never"))
    flow = fake.add_template(unique("wf"), kind="workflow_job", nodes=[bad.id, never.id])
    keys = await backend.submit(job_for({"awx_workflow_template": flow.name}))
    report = await final(backend, keys)
    assert report.status is BackendStatus.FAILED
    assert "No error handling path" in (report.message or "")
    assert not fake.launches_of(never) and never.name not in (await backend.output(keys, 0)).text


async def test_stopping_a_workflow_cancels_its_running_node(
    fake: FakeAwx, backend: AwxBackend
) -> None:
    hang = fake.add_template(unique("hang"), final="HANG")
    flow = fake.add_template(unique("wf"), kind="workflow_job", nodes=[hang.id])
    keys = await backend.submit(job_for({"awx_workflow_template": flow.name}))
    await until(backend, keys, BackendStatus.RUNNING)
    await asyncio.sleep(0.2)
    await backend.stop(keys, force=True)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    child = fake.jobs[int(keys["awxJobId"])].children[0]
    assert child.canceled_at is not None


# --------------------------------------------------------------------------- re-attach, prefix


async def test_a_new_process_reattaches_through_the_keys(fake: FakeAwx, tmp_path: Path) -> None:
    template = fake.add_template(unique(), pending_delay=0.5, lines=["TASK [a]", "TASK [b]"])
    first = make_backend(fake, tmp_path)
    keys = await first.submit(job_for({"awx_job_template": template.name}))
    await first.aclose()
    registry = BackendRegistry.load(tmp_path, {"awx": {"prod": config(fake)}})
    again = registry.get("awxBackend")
    assert (await final(again, dict(keys))).status is BackendStatus.SUCCEEDED
    assert "TASK [b]" in (await again.output(dict(keys), 0)).text
    await registry.aclose()
    assert len(fake.launches_of(template)) == 1


async def test_the_aap_gateway_prefix_is_used(fake: FakeAwx, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path, api_prefix="/api/controller/v2")
    template = fake.add_template(unique())
    keys = await backend.submit(job_for({"awx_job_template": template.name}))
    report = await final(backend, keys)
    await backend.aclose()
    assert ("POST", f"/api/controller/v2/job_templates/{template.id}/launch/") in fake.requests
    assert report.url == f"{fake.url}/execution/jobs/playbook/{keys['awxJobId']}/output"


async def test_an_unreachable_awx_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.server import free_port

    monkeypatch.setenv(TOKEN_ENV, "awx-secret")
    backend = AwxBackend(
        BackendContext(
            tmp_path,
            {
                "prod": {
                    "url": f"http://127.0.0.1:{free_port()}",
                    "token_env": TOKEN_ENV,
                    "timeout": 2,
                }
            },
        )
    )
    with pytest.raises(BackendUnavailable, match="cannot read the job template"):
        await backend.submit(job_for({"awx_job_template": "deploy"}))  # sent again later
    await backend.aclose()
