"""Kubernetes specifics, against the fake Kubernetes API server on loopback: parameters as
environment variables, each status mapping, incremental pod logs, suspend and foreground delete,
faults while polling, credentials, a lost create answer, and re-attaching from a new process."""

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
    BackendStatus,
    BackendUnavailable,
    Job,
    JobNotFound,
    SpecRejected,
    StatusReport,
    SubmitRefused,
)
from backends.kubernetes import KubernetesBackend
from backends.kubernetes.jobs import job_name, job_report
from backends.kubernetes.logs import Cursor, LogLine, parse_log, parse_timestamp, take_lines
from tests.fakes.fake_kubernetes import FakeKubernetes
from tests.fakes.server import InProcess, free_port

TOKEN_ENV = "TEST_K8S_TOKEN"
NS = "ascob"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKubernetes]:
    os.environ[TOKEN_ENV] = "k8s-secret"
    server = FakeKubernetes(namespaces=(NS,)).start()
    yield server
    server.stop()


def make_backend(
    fake: FakeKubernetes, data_dir: Path, templates: dict[str, Any] | None = None, **extra: Any
) -> KubernetesBackend:
    instance = {
        "url": fake.url,
        "token_env": TOKEN_ENV,
        "namespace": NS,
        "timeout": 1,
        "templates": templates or {},
        **extra,
    }
    return KubernetesBackend(BackendContext(data_dir, {"k8s": instance}), InProcess(fake.server))


_run_ids = iter(range(500, 10**6))


def job_for(template: str, parameters: dict[str, str] | None = None) -> Job:
    return Job(
        next(_run_ids),
        "k8s test",
        "alice",
        {"kubernetes_template": template},
        parameters or {},
        uuid.uuid4().hex,
    )


class Env:
    """A backend with one template per test, each on its own fake image."""

    def __init__(self, fake: FakeKubernetes, tmp_path: Path) -> None:
        self.fake, self.tmp_path = fake, tmp_path
        self.templates: dict[str, Any] = {}
        self._backend: KubernetesBackend | None = None

    def template(self, template: dict[str, Any] | None = None, **script: Any) -> str:
        name = f"t-{uuid.uuid4().hex[:6]}"
        image = f"test/{name}:1"
        self.fake.add_image(image, **script)
        self.templates[name] = {"image": image, "command": "run --all", **(template or {})}
        return name

    def backend(self, data_dir: Path | None = None) -> KubernetesBackend:
        return make_backend(self.fake, data_dir or self.tmp_path, self.templates)


@pytest.fixture
def env(fake: FakeKubernetes, tmp_path: Path) -> Iterator[Env]:
    yield Env(fake, tmp_path)
    fake.faults.clear()


async def final(backend: KubernetesBackend, keys: dict[str, str], within: int = 200) -> Any:
    for _ in range(within):
        report = await backend.status(keys)
        if report.status.is_final:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"not final: {report}")


async def until(backend: KubernetesBackend, keys: dict[str, str], wanted: BackendStatus) -> None:
    for _ in range(200):
        if (await backend.status(keys)).status is wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {wanted}")


async def read_all(
    backend: KubernetesBackend, keys: dict[str, str], offset: int = 0
) -> tuple[list[str], int]:
    pieces = []
    for _ in range(400):
        chunk = await backend.output(keys, offset)
        assert chunk.next_offset >= offset
        pieces.append(chunk.text)
        offset = chunk.next_offset
        if not chunk.more:
            return pieces, offset
        await asyncio.sleep(0.03)
    raise AssertionError(f"output still coming: {pieces}")


def created_named(fake: FakeKubernetes, name: str) -> list[Any]:
    return [j for j in fake.created if j.name == name]


# --------------------------------------------------------------------------- submission


async def test_parameters_become_environment_variables(env: Env) -> None:
    template = env.template(lines=["done"])
    backend = env.backend()
    job = job_for(template, {"GREETING": "hello there", "TARGET_ENV": "prod"})
    keys = await backend.submit(job)
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    created = env.fake.job(keys["kubernetesJobName"], NS)
    container = created.body["spec"]["template"]["spec"]["containers"][0]
    variables = {e["name"]: e["value"] for e in container["env"]}
    assert variables == {
        "GREETING": "hello there",
        "TARGET_ENV": "prod",
        "ASCOB_RUN_ID": str(job.run_id),
        "ASCOB_WEBHOOK_ID": job.webhook_id,
    }
    assert container["command"] == ["run", "--all"]
    text = (await backend.output(keys, 0)).text
    assert text == "GREETING=hello there\nTARGET_ENV=prod\ndone\n"
    name = keys["kubernetesJobName"]
    assert name.startswith(f"ascob-{job.run_id}-") and len(name) <= 63
    assert keys["kubernetesJobUid"] == created.uid
    await backend.aclose()


async def test_template_settings_reach_the_job_spec(env: Env) -> None:
    template = env.template(
        {
            "service_account": "reporter",
            "backoff_limit": 2,
            "active_deadline_seconds": 600,
            "ttl_seconds_after_finished": 3600,
        }
    )
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    spec = env.fake.job(keys["kubernetesJobName"], NS).spec
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["template"]["spec"]["serviceAccountName"] == "reporter"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    await backend.aclose()


@pytest.mark.parametrize("name", ["1ST", "MY-VAR", "with space", "ASCOB_RUN_ID", ""])
async def test_parameters_that_cannot_be_env_vars_are_rejected(env: Env, name: str) -> None:
    template = env.template()
    backend = env.backend()
    before = len(env.fake.created)
    with pytest.raises(SpecRejected, match="environment variables") as info:
        await backend.submit(job_for(template, {name: "x"}))
    assert isinstance(info.value, SubmitRefused)  # the engine FAILS the run, never IN_DOUBT
    assert len(env.fake.created) == before
    await backend.aclose()


def test_unknown_instance_or_template_is_rejected(env: Env) -> None:
    template = env.template()
    backend = env.backend()
    backend.validate({"kubernetes_template": template})
    with pytest.raises(SpecRejected, match=r"'nope' is not a template .*" + template):
        backend.validate({"kubernetes_template": "nope"})
    with pytest.raises(SpecRejected, match="not configured"):
        backend.validate({"kubernetes_instance": "elsewhere", "kubernetes_template": template})
    with pytest.raises(SpecRejected, match="kubernetes_template is required"):
        backend.validate({"kubernetes_instance": "k8s"})


def test_a_template_without_image_is_a_configuration_error(tmp_path: Path) -> None:
    backend = KubernetesBackend(
        BackendContext(tmp_path, {"k8s": {"url": "http://x", "templates": {"bad": {}}}})
    )
    with pytest.raises(SpecRejected, match=r"\[kubernetes.k8s.templates.bad\] needs an image"):
        backend.validate({"kubernetes_template": "bad"})


@pytest.mark.parametrize(
    ("token", "forbidden", "expected"),
    [("wrong", False, "401 Unauthorized"), ("readonly", True, "403 Forbidden.*forbidden")],
)
async def test_bad_credentials_are_refused_with_the_api_message(
    env: Env, token: str, forbidden: bool, expected: str
) -> None:
    os.environ["TEST_K8S_OTHER"] = token
    if forbidden:
        env.fake.forbidden_tokens.add(token)
    template = env.template()
    backend = make_backend(env.fake, env.tmp_path, env.templates, token_env="TEST_K8S_OTHER")
    with pytest.raises(SubmitRefused, match=expected):
        await backend.submit(job_for(template))
    await backend.aclose()


async def test_unknown_namespace_is_refused(env: Env) -> None:
    template = env.template()
    backend = make_backend(env.fake, env.tmp_path, env.templates, namespace="nowhere")
    with pytest.raises(SubmitRefused, match='namespaces "nowhere" not found'):
        await backend.submit(job_for(template))
    await backend.aclose()


async def test_missing_token_variable_is_refused(env: Env) -> None:
    template = env.template()
    backend = make_backend(env.fake, env.tmp_path, env.templates, token_env="TEST_K8S_UNSET")
    with pytest.raises(SubmitRefused, match="TEST_K8S_UNSET"):
        await backend.submit(job_for(template))
    await backend.aclose()


async def test_an_unreadable_ca_file_is_refused_clearly(env: Env) -> None:
    template = env.template()
    missing = env.tmp_path / "no-such-ca.pem"
    backend = make_backend(env.fake, env.tmp_path, env.templates, ca_file=str(missing))
    with pytest.raises(SubmitRefused, match=r"cannot use ca_file .*no-such-ca\.pem"):
        await backend.submit(job_for(template))
    await backend.aclose()


async def test_unreachable_api_server_is_refused(tmp_path: Path) -> None:
    instance = {
        "url": f"http://127.0.0.1:{free_port()}",
        "token_env": TOKEN_ENV,
        "templates": {"t": {"image": "x"}},
    }
    backend = KubernetesBackend(BackendContext(tmp_path, {"k8s": instance}))
    with pytest.raises(SubmitRefused, match="cannot connect"):
        await backend.submit(job_for("t"))
    await backend.aclose()


# --------------------------------------------------------------------------- a lost answer


async def test_a_lost_create_answer_finds_the_same_job_on_409(env: Env) -> None:
    template = env.template()
    backend = env.backend()
    env.fake.faults.add("POST", r"/jobs$", "hang", seconds=3)  # created, answered too late
    job = job_for(template)
    keys = await backend.submit(job)
    posts = [r for r in env.fake.requests if r[0] == "POST" and r[1].endswith("/jobs")]
    assert len(posts) >= 2  # it was sent again (and answered 409 AlreadyExists)
    jobs = created_named(env.fake, keys["kubernetesJobName"])
    assert len(jobs) == 1  # one Job, never two
    assert keys["kubernetesJobUid"] == jobs[0].uid
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    await backend.aclose()


async def test_a_5xx_on_create_is_retried_once_more(env: Env) -> None:
    template = env.template()
    backend = env.backend()
    env.fake.faults.add("POST", r"/jobs$", "503")
    keys = await backend.submit(job_for(template))
    assert len(created_named(env.fake, keys["kubernetesJobName"])) == 1
    await backend.aclose()


async def test_a_job_of_that_name_from_elsewhere_is_not_taken_for_ours(env: Env) -> None:
    template = env.template()
    backend = env.backend()
    job = job_for(template)
    theirs = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(job), "annotations": {"owner": "someone else"}},
        "spec": {"template": {"spec": {"containers": [{"name": "job", "image": "x"}]}}},
    }
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{env.fake.url}/apis/batch/v1/namespaces/{NS}/jobs",
            json=theirs,
            headers={"Authorization": "Bearer k8s-secret"},
        )
    assert r.status_code == 201
    with pytest.raises(SubmitRefused, match="already exists and is not this run's"):
        await backend.submit(job)
    await backend.aclose()


# --------------------------------------------------------------------------- statuses


async def test_queued_until_a_pod_starts_then_running_then_succeeded(env: Env) -> None:
    template = env.template(start_delay=0.6, lines=["a", "b", "c"], line_interval=0.2)
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    report = await backend.status(keys)
    assert report.status is BackendStatus.QUEUED and report.message == "no pod started yet"
    assert report.url and report.url.endswith(f"/namespaces/{NS}/jobs/{keys['kubernetesJobName']}")
    await until(backend, keys, BackendStatus.RUNNING)
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    await backend.aclose()


async def test_backoff_limit_exceeded_is_failed_with_its_reason(env: Env) -> None:
    template = env.template({"backoff_limit": 0}, exit_codes=[3])
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    report = await final(backend, keys)
    assert report.status is BackendStatus.FAILED
    assert report.message == (
        "job failed (BackoffLimitExceeded: Job has reached the specified backoff limit)"
    )
    await backend.aclose()


async def test_deadline_exceeded_is_failed_with_its_reason(env: Env) -> None:
    template = env.template({"active_deadline_seconds": 1}, hang=True)
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    report = await final(backend, keys, within=100)
    assert report.status is BackendStatus.FAILED
    assert "DeadlineExceeded" in (report.message or "")
    await backend.aclose()


async def test_a_retried_pod_keeps_the_run_going_and_both_logs_are_output(env: Env) -> None:
    template = env.template(
        {"backoff_limit": 2}, lines=["work"], exit_codes=[1, 0], retry_delay=1.0
    )
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    live, _ = await read_all(backend, keys)
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    assert "".join(live) == "work\nwork\n"  # the failed attempt's log, then the retry's
    assert len(env.fake.job(keys["kubernetesJobName"], NS).pods) == 2
    await backend.aclose()


async def test_suspended_by_someone_else_is_queued_not_aborted(env: Env) -> None:
    template = env.template(start_delay=30)
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    async with httpx.AsyncClient() as http:
        r = await http.patch(
            f"{env.fake.url}/apis/batch/v1/namespaces/{NS}/jobs/{keys['kubernetesJobName']}",
            json={"spec": {"suspend": True}},
            headers={
                "Authorization": "Bearer k8s-secret",
                "Content-Type": "application/merge-patch+json",
            },
        )
    assert r.status_code == 200
    report = await backend.status(keys)
    assert report.status is BackendStatus.QUEUED and "not by ASCOB" in (report.message or "")
    await backend.aclose()


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ({"status": {}}, BackendStatus.QUEUED),
        ({"status": {"active": 1}}, BackendStatus.RUNNING),
        ({"status": {"failed": 1}}, BackendStatus.RUNNING),  # between a failure and its retry
        ({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}, "SUCCEEDED"),
        ({"status": {"conditions": [{"type": "Complete", "status": "False"}]}}, "QUEUED"),
        ({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}, "FAILED"),
        ({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}, "ABORTED"),
        (
            {
                "metadata": {"annotations": {"ascob.io/stopped": "suspend"}},
                "spec": {"suspend": True},
                "status": {"terminating": 1},
            },
            "RUNNING",
        ),
        (
            {
                "metadata": {"annotations": {"ascob.io/stopped": "suspend"}},
                "spec": {"suspend": True},
            },
            "ABORTED",
        ),
        ({"status": {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}}, "QUEUED"),
    ],
)
def test_status_table(job: dict[str, Any], expected: str) -> None:
    assert job_report(job).status is BackendStatus(expected)


# --------------------------------------------------------------------------- output


async def test_output_grows_while_running_without_duplicated_lines(env: Env) -> None:
    lines = [f"line {i:02d}" for i in range(40)]
    template = env.template(lines=lines, line_interval=0.02)  # ~50 lines a second
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    pieces, end = await read_all(backend, keys)
    assert len([p for p in pieces if p]) > 2  # it came in pieces, while the pod ran
    assert "".join(pieces) == "".join(f"{line}\n" for line in lines)
    assert end == len("".join(pieces).encode())
    log_calls = [r for r in env.fake.requests if r[1].endswith("/log")]
    assert any("sinceTime=" in q and "timestamps=true" in q for _, _, q in log_calls)
    rest = await backend.output(keys, end)
    assert rest.text == "" and not rest.more
    await backend.aclose()


async def test_a_new_process_continues_from_an_offset(env: Env) -> None:
    lines = [f"row {i}" for i in range(12)]
    template = env.template(lines=lines, line_interval=0.1)
    first = env.backend()
    keys = await first.submit(job_for(template))
    await until(first, keys, BackendStatus.RUNNING)
    await asyncio.sleep(0.5)
    early = await first.output(keys, 0)
    assert early.more and early.text
    await first.aclose()
    second = env.backend(env.tmp_path / "other")  # nothing shared but the keys
    pieces, end = await read_all(second, keys, early.next_offset)  # on from where it was
    whole = "".join(f"{x}\n" for x in lines)
    assert early.text + "".join(pieces) == whole
    assert end == len(whole.encode())
    third = env.backend(env.tmp_path / "third")  # an arbitrary offset, mid-line
    tail = await third.output(keys, 3)
    assert tail.text == whole[3:] and tail.next_offset == end and not tail.more
    await second.aclose()
    await third.aclose()


def test_boundary_lines_of_the_same_instant_are_not_repeated() -> None:
    t = parse_timestamp("2026-01-01T10:00:00.5Z")
    first = [LogLine(t - 1, "a"), LogLine(t, "b"), LogLine(t, "c")]
    cursor, taken = take_lines(Cursor(), "pod", first[:2])
    assert taken == ["a", "b"] and cursor.at_last == 1
    cursor, taken = take_lines(cursor, "pod", [*first, LogLine(t + 1, "d")])
    assert taken == ["c", "d"]
    assert cursor.offset == len("a\nb\nc\nd\n")


def test_log_timestamps_are_parsed_to_the_nanosecond() -> None:
    assert (
        parse_timestamp("2026-01-01T00:00:01.000000001Z") - parse_timestamp("2026-01-01T00:00:01Z")
        == 1
    )
    log = "2026-01-01T00:00:01.1Z one\n2026-01-01T00:00:01.25Z two words\n2026-01-01T00:00:02Z par"
    assert [x.text for x in parse_log(log, complete=False)] == ["one", "two words"]
    assert [x.text for x in parse_log(log, complete=True)][-1] == "par"


# --------------------------------------------------------------------------- stop


async def test_stop_suspends_the_job_and_ends_aborted(env: Env) -> None:
    template = env.template(hang=True)
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys)
    report = await final(backend, keys)
    assert report == StatusReport(
        BackendStatus.ABORTED, "stopped by ASCOB (job suspended)", report.url
    )
    name = keys["kubernetesJobName"]
    patches = [r for r in env.fake.requests if r[0] == "PATCH" and r[1].endswith(name)]
    assert patches  # the fake answers 415 to anything but a merge patch
    assert env.fake.job(name, NS).suspended_at is not None
    assert not any(r[0] == "DELETE" and r[1].endswith(name) for r in env.fake.requests)
    await backend.aclose()


async def test_forced_stop_deletes_in_the_foreground_and_stays_aborted(env: Env) -> None:
    template = env.template(hang=True, lines=["working"])
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys, force=True)
    name = keys["kubernetesJobName"]
    deletes = [q for m, p, q in env.fake.requests if m == "DELETE" and p.endswith(name)]
    assert len(deletes) == 1
    assert "propagationPolicy=Foreground" in deletes[0] and "gracePeriodSeconds=0" in deletes[0]
    assert (await backend.status(keys)).status is BackendStatus.ABORTED
    for _ in range(100):  # until the Job and its pods are gone
        if (NS, name) not in env.fake.jobs:
            break
        await asyncio.sleep(0.05)
        await backend.status(keys)
    assert (NS, name) not in env.fake.jobs
    assert not env.fake.orphans
    report = await backend.status(keys)
    assert report.status is BackendStatus.ABORTED and "forced stop" in (report.message or "")
    assert not (await backend.output(keys, 0)).more
    restarted = env.backend()  # a new process on the same data directory remembers it
    assert (await restarted.status(keys)).status is BackendStatus.ABORTED
    elsewhere = env.backend(env.tmp_path / "other-host")
    with pytest.raises(JobNotFound):
        await elsewhere.status(keys)
    for b in (backend, restarted, elsewhere):
        await b.aclose()


async def test_stop_while_no_pod_started_aborts(env: Env) -> None:
    template = env.template(start_delay=1.0)
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    await backend.stop(keys)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    assert env.fake.job(keys["kubernetesJobName"], NS).pods == []
    await backend.aclose()


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("kind", ["500", "503", "malformed", "hang"])
async def test_faults_while_polling_are_unavailable_never_final(env: Env, kind: str) -> None:
    template = env.template()
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    await final(backend, keys)
    env.fake.faults.add("GET", r"/jobs/ascob-[^/]+$", kind, seconds=3)
    with pytest.raises(BackendUnavailable):
        await backend.status(keys)
    assert (await backend.status(keys)).status is BackendStatus.SUCCEEDED
    env.fake.faults.add("GET", r"/pods$", kind, seconds=3)
    with pytest.raises(BackendUnavailable):
        await backend.output(keys, 0)
    assert "step 2" in (await backend.output(keys, 0)).text
    await backend.aclose()


async def test_credentials_revoked_while_polling_is_unavailable(env: Env) -> None:
    template = env.template()
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    env.fake.faults.clear()
    old, env.fake.token = env.fake.token, "rotated"
    try:
        with pytest.raises(BackendUnavailable, match="Unauthorized"):
            await backend.status(keys)
    finally:
        env.fake.token = old
    await backend.aclose()


async def test_a_job_that_vanished_is_not_found(env: Env) -> None:
    template = env.template()
    backend = env.backend()
    keys = await backend.submit(job_for(template))
    await final(backend, keys)
    with env.fake._lock:
        del env.fake.jobs[(NS, keys["kubernetesJobName"])]  # e.g. ttlSecondsAfterFinished
    with pytest.raises(JobNotFound, match="not found"):
        await backend.status(keys)
    await backend.aclose()


# --------------------------------------------------------------------------- re-attach


async def test_a_new_registry_reattaches_through_the_keys(env: Env) -> None:
    template = env.template(start_delay=0.5, lines=["one", "two"])
    first = env.backend()
    keys = await first.submit(job_for(template))
    await first.aclose()
    second = env.backend(env.tmp_path / "restarted")
    assert (await final(second, dict(keys))).status is BackendStatus.SUCCEEDED
    assert (await second.output(dict(keys), 0)).text == "one\ntwo\n"
    assert len(created_named(env.fake, keys["kubernetesJobName"])) == 1
    await second.aclose()
