"""Airflow specifics, against the fake Airflow on loopback (Airflow 2's /api/v1 and Airflow 3's
/api/v2): conf, DAG checks, the run's states, task logs by offset, stop with a note, lost trigger
answers, JWT renewal, re-attach, and what happens when Airflow misbehaves."""

from __future__ import annotations

import asyncio
import os
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
    SpecRejected,
    StatusReport,
    SubmitRefused,
)
from backends.airflow import AirflowBackend
from tests.fakes.fake_airflow import STOPPED_LINE, FakeAirflow, FakeTask
from tests.fakes.server import InProcess

PASSWORD_ENV = "TEST_AIRFLOW_PASSWORD"
TOKEN_ENV = "TEST_AIRFLOW_TOKEN"


@pytest.fixture(scope="module", params=["v1", "v2"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeAirflow]:
    os.environ[PASSWORD_ENV] = "airflow-secret"
    yield FakeAirflow(api=request.param)  # served in-process (InProcess): not started


@pytest.fixture(scope="module")
def fake3() -> Iterator[FakeAirflow]:
    """Airflow 3 alone (JWT)."""
    os.environ[PASSWORD_ENV] = "airflow-secret"
    yield FakeAirflow(api="v2")  # served in-process (InProcess): not started


def make_backend(fake: FakeAirflow, tmp_path: Path, **extra: Any) -> AirflowBackend:
    instance = {
        "url": fake.url,
        "api": fake.api,
        "username": "ascob",
        "password_env": PASSWORD_ENV,
        "timeout": 1,
        **extra,
    }
    backend = AirflowBackend(BackendContext(tmp_path, {"etl": instance}), InProcess(fake.server))
    backend.retry_delay = 0.05
    return backend


@pytest.fixture
async def backend(fake: FakeAirflow, tmp_path: Path) -> Any:
    b = make_backend(fake, tmp_path)
    yield b
    await b.aclose()
    fake.faults.clear()


def new_dag(fake: FakeAirflow, *tasks: FakeTask, **kwargs: Any) -> str:
    dag_id = f"dag_{uuid.uuid4().hex[:8]}"
    fake.add_dag(dag_id, list(tasks) or [FakeTask("main")], **kwargs)
    return dag_id


def job_for(dag_id: str, parameters: dict[str, str] | None = None, run_id: int = 1) -> Job:
    return Job(run_id, "d", "alice", {"airflow_dag_id": dag_id}, parameters or {}, "w")


async def final(backend: AirflowBackend, keys: dict[str, str]) -> StatusReport:
    for _ in range(300):
        report = await backend.status(keys)
        if report.status.is_final:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"not final: {report}")


async def until(backend: AirflowBackend, keys: dict[str, str], wanted: BackendStatus) -> None:
    for _ in range(300):
        if (await backend.status(keys)).status is wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {wanted}")


# --------------------------------------------------------------------------- submit


async def test_parameters_arrive_as_conf_of_a_run_named_by_ascob(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    dag_id = new_dag(fake)
    keys = await backend.submit(job_for(dag_id, {"ENV": "prod", "GREETING": "hi"}, run_id=42))
    assert keys["airflowDagId"] == dag_id and keys["airflowInstance"] == "etl"
    assert keys["airflowDagRunId"].startswith("ascob-42-")
    assert fake.created == [c for c in fake.created if c[0] != dag_id] + [
        (dag_id, keys["airflowDagRunId"], {"ENV": "prod", "GREETING": "hi"})
    ]
    await final(backend, keys)
    assert "conf ENV=prod" in (await backend.output(keys)).text
    note = fake.run(dag_id, keys["airflowDagRunId"]).note
    assert note == ("ASCOB run 42 for alice" if fake.api == "v2" else None)


async def test_unknown_dag_is_refused_with_airflows_message(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    with pytest.raises(SubmitRefused, match=r"404.*no_such_dag.*not found"):
        await backend.submit(job_for("no_such_dag"))
    assert not any(c[0] == "no_such_dag" for c in fake.created)


async def test_paused_dag_is_refused_not_queued_forever(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    dag_id = new_dag(fake, is_paused=True)
    with pytest.raises(SubmitRefused, match="DAG is paused"):
        await backend.submit(job_for(dag_id))
    assert fake.runs_of(dag_id) == []


async def test_bad_credentials_are_refused_with_airflows_message(
    fake: FakeAirflow, tmp_path: Path
) -> None:
    os.environ["TEST_AIRFLOW_WRONG"] = "wrong"
    backend = make_backend(fake, tmp_path, password_env="TEST_AIRFLOW_WRONG")
    expected = "Invalid credentials" if fake.api == "v2" else "Unauthorized"
    with pytest.raises(SubmitRefused, match=rf"401.*{expected}"):
        await backend.submit(job_for(new_dag(fake)))
    await backend.aclose()


async def test_a_wrong_bearer_token_is_refused(fake: FakeAirflow, tmp_path: Path) -> None:
    os.environ[TOKEN_ENV] = "not-the-token"
    backend = make_backend(fake, tmp_path, token_env=TOKEN_ENV)
    with pytest.raises(SubmitRefused, match=r"HTTP 40[13]"):
        await backend.submit(job_for(new_dag(fake)))
    await backend.aclose()


async def test_a_ready_bearer_token_is_used(fake: FakeAirflow, tmp_path: Path) -> None:
    os.environ[TOKEN_ENV] = fake.bearer
    backend = make_backend(fake, tmp_path, token_env=TOKEN_ENV)
    logins = fake.logins
    keys = await backend.submit(job_for(new_dag(fake)))
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
    assert fake.logins == logins  # no exchange at /auth/token
    await backend.aclose()


async def test_missing_password_variable_refuses(fake: FakeAirflow, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path, password_env="TEST_AIRFLOW_UNSET_VARIABLE")
    with pytest.raises(SubmitRefused, match="TEST_AIRFLOW_UNSET_VARIABLE"):
        await backend.submit(job_for(new_dag(fake)))


async def test_an_unreachable_airflow_is_unavailable(tmp_path: Path) -> None:
    """Nothing was sent: ASCOB sends the job again while ASCOB_DISPATCH_RETRY_SECONDS allow."""
    fake = FakeAirflow()
    backend = make_backend(fake, tmp_path)
    backend.transport = InProcess()  # served nowhere: the connection is refused
    with pytest.raises(BackendUnavailable, match="cannot read the DAG"):
        await backend.submit(job_for("any"))
    await backend.aclose()


def test_labels_are_validated(fake: FakeAirflow, tmp_path: Path) -> None:
    backend = make_backend(fake, tmp_path)
    backend.validate({"airflow_dag_id": "etl"})  # one instance: the label may be left out
    with pytest.raises(SpecRejected, match="airflow_instance"):
        backend.validate({"airflow_instance": "other", "airflow_dag_id": "etl"})
    with pytest.raises(SpecRejected, match="airflow_dag_id"):
        backend.validate({"airflow_instance": "etl"})
    assert backend.accepts({"airflow_dag_id": "x"}, None)
    assert not backend.accepts({"jenkins_project_name": "x"}, None)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"url": "http://x", "api": "v3"}, "v1"),
        ({"url": "http://x", "username": "u"}, "password_env"),
        ({"api": "v2"}, "url"),
    ],
)
def test_bad_configuration_is_explained(
    tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    backend = AirflowBackend(BackendContext(tmp_path, {"etl": config}))
    with pytest.raises(SpecRejected, match=message):  # the instance refuses its specs
        backend.validate({"airflow_instance": "etl", "airflow_dag_id": "d"})


# --------------------------------------------------------------------------- lost answers


async def test_a_lost_trigger_answer_is_sent_again_and_found(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    dag_id = new_dag(fake)
    # Airflow creates the run, but its answer comes after the client gave up (timeout 1 s)
    fake.faults.add("POST", rf"/dags/{dag_id}/dagRuns$", "hang", seconds=2)
    keys = await backend.submit(job_for(dag_id, {"X": "1"}))
    assert [r.run_id for r in fake.runs_of(dag_id)] == [keys["airflowDagRunId"]]
    posts = [p for m, p in fake.requests if m == "POST" and p.endswith(f"{dag_id}/dagRuns")]
    assert len(posts) == 2  # the repeat was answered 409: the same run
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED


async def test_a_5xx_trigger_is_sent_again_with_the_same_name(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    dag_id = new_dag(fake)
    fake.faults.add("POST", rf"/dags/{dag_id}/dagRuns$", "503", times=2)
    keys = await backend.submit(job_for(dag_id))
    assert [r.run_id for r in fake.runs_of(dag_id)] == [keys["airflowDagRunId"]]


async def test_a_trigger_without_any_clear_answer_has_an_unknown_outcome(
    fake: FakeAirflow, tmp_path: Path
) -> None:
    backend = make_backend(fake, tmp_path, trigger_attempts=2)
    dag_id = new_dag(fake)
    fake.faults.add("POST", rf"/dags/{dag_id}/dagRuns$", "502", times=2)
    fake.faults.add("GET", rf"/dags/{dag_id}/dagRuns/", "502", times=1)
    try:
        with pytest.raises(Exception, match="outcome unknown") as info:
            await backend.submit(job_for(dag_id))
        assert not isinstance(info.value, BackendError)  # neither refused nor transient: IN_DOUBT
        assert fake.runs_of(dag_id) == []
    finally:
        fake.faults.clear()
        await backend.aclose()


async def test_a_run_of_the_same_name_with_another_conf_is_not_ours(
    fake: FakeAirflow, backend: AirflowBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    dag_id = new_dag(fake)
    nonce = uuid.UUID("0123456789abcdef0123456789abcdef")
    monkeypatch.setattr("backends.airflow.uuid.uuid4", lambda: nonce)
    taken = await backend.submit(job_for(dag_id, {"WHO": "someone else"}, run_id=5))
    with pytest.raises(SubmitRefused, match="another conf"):
        await backend.submit(job_for(dag_id, {"WHO": "me"}, run_id=5))
    assert [(r.run_id, r.conf) for r in fake.runs_of(dag_id)] == [
        (taken["airflowDagRunId"], {"WHO": "someone else"})
    ]


# --------------------------------------------------------------------------- states


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("queued", BackendStatus.QUEUED),
        ("running", BackendStatus.RUNNING),
        ("success", BackendStatus.SUCCEEDED),
        ("failed", BackendStatus.FAILED),
    ],
)
async def test_dag_run_states_are_mapped(
    fake: FakeAirflow, backend: AirflowBackend, state: str, expected: BackendStatus
) -> None:
    dag_id = new_dag(fake, FakeTask("main", result="hang"))
    keys = await backend.submit(job_for(dag_id))
    fake.run(dag_id, keys["airflowDagRunId"]).state_override = state
    report = await backend.status(keys)
    assert report.status is expected
    assert report.url and keys["airflowDagRunId"] in report.url and dag_id in report.url


async def test_an_unknown_state_keeps_polling(fake: FakeAirflow, backend: AirflowBackend) -> None:
    dag_id = new_dag(fake)
    keys = await backend.submit(job_for(dag_id))
    run = fake.run(dag_id, keys["airflowDagRunId"])
    run.state_override = "restarting"
    with pytest.raises(BackendUnavailable, match="restarting"):
        await backend.status(keys)
    run.state_override = None
    assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED


async def test_a_run_goes_queued_running_succeeded(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    dag_id = new_dag(fake, FakeTask("a", ["x"] * 6), queue_delay=0.4, line_interval=0.1)
    keys = await backend.submit(job_for(dag_id))
    seen = [(await backend.status(keys)).status]
    while not seen[-1].is_final:
        await asyncio.sleep(0.05)
        status = (await backend.status(keys)).status
        if status is not seen[-1]:
            seen.append(status)
    assert seen == [BackendStatus.QUEUED, BackendStatus.RUNNING, BackendStatus.SUCCEEDED]


async def test_a_failing_task_fails_the_run_and_is_named(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    dag_id = new_dag(fake, FakeTask("extract"), FakeTask("load", result="failed"), FakeTask("end"))
    keys = await backend.submit(job_for(dag_id))
    report = await final(backend, keys)
    assert report.status is BackendStatus.FAILED
    assert "failed tasks: load" in (report.message or "")


# --------------------------------------------------------------------------- output


async def read_all(backend: AirflowBackend, keys: dict[str, str]) -> tuple[list[str], int]:
    pieces, offset = [], 0
    for _ in range(400):
        chunk = await backend.output(keys, offset)
        assert chunk.next_offset >= offset
        pieces.append(chunk.text)
        offset = chunk.next_offset
        if not chunk.more:
            return pieces, offset
        await asyncio.sleep(0.05)
    raise AssertionError("output never ended")


async def test_task_logs_are_read_in_order_by_offset(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    first = [f"extract {i}" for i in range(6)]
    second = [f"load {i}" for i in range(6)]
    dag_id = new_dag(fake, FakeTask("extract", first), FakeTask("load", second), line_interval=0.2)
    keys = await backend.submit(job_for(dag_id))
    pieces, offset = await read_all(backend, keys)
    text = "".join(pieces)
    assert len([p for p in pieces if p]) > 2  # it came in several pieces while the DAG ran
    assert offset == len(text.encode())
    whole = await backend.output(keys, 0)
    assert whole.text == text and not whole.more
    lines = [line.split(" - ", 1)[-1] for line in text.splitlines()]
    assert lines == ["=== extract (try 1) ===", *first, "=== load (try 1) ===", *second]
    assert "Found local files" not in text and "source details" not in text


async def test_long_logs_follow_continuation_tokens(fake3: FakeAirflow, tmp_path: Path) -> None:
    backend = make_backend(fake3, tmp_path)
    lines = [f"row {i}" for i in range(25)]
    dag_id = new_dag(fake3, FakeTask("main", lines), line_interval=0.01)
    keys = await backend.submit(job_for(dag_id))
    await final(backend, keys)
    fake3.log_page_size = 4
    try:
        text = (await make_backend(fake3, tmp_path).output(keys)).text
        pages = [p for m, p in fake3.requests if m == "GET" and "/logs/1" in p]
    finally:
        fake3.log_page_size = 1000
        await backend.aclose()
    assert [line.split(" - ", 1)[-1] for line in text.splitlines()[1:]] == lines
    assert len(pages) >= 7  # 27 entries, 4 a page


async def test_output_before_the_run_starts_is_empty_and_more(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    keys = await backend.submit(job_for(new_dag(fake, queue_delay=5)))
    chunk = await backend.output(keys, 0)
    assert chunk.text == "" and chunk.next_offset == 0 and chunk.more


async def test_output_of_a_run_that_ended_before_its_tasks_is_complete(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    dag_id = new_dag(fake, queue_delay=30)
    keys = await backend.submit(job_for(dag_id))
    fake.run(dag_id, keys["airflowDagRunId"]).state_override = "failed"  # e.g. dagrun_timeout
    chunk = await backend.output(keys, 0)
    assert chunk.text == "" and not chunk.more


# --------------------------------------------------------------------------- stop


@pytest.mark.parametrize("force", [False, True], ids=["clean", "force"])
async def test_stop_fails_the_run_with_a_note_and_ends_aborted(
    fake: FakeAirflow, backend: AirflowBackend, force: bool
) -> None:
    dag_id = new_dag(fake, FakeTask("wait", ["waiting"], result="hang"), FakeTask("after"))
    keys = await backend.submit(job_for(dag_id, run_id=77))
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys, force=force)
    report = await final(backend, keys)
    assert report.status is BackendStatus.ABORTED
    run = fake.run(dag_id, keys["airflowDagRunId"])
    assert run.note == "Stopped through ASCOB (run 77)" == report.message
    if fake.api == "v1":
        assert ("PATCH", f"/api/v1/dags/{dag_id}/dagRuns/{run.run_id}/setNote") in fake.requests
    text = (await backend.output(keys)).text
    assert STOPPED_LINE in text and "after" not in text  # the next task never ran


async def test_stop_is_known_to_a_new_process_through_the_note(
    fake: FakeAirflow, tmp_path: Path
) -> None:
    dag_id = new_dag(fake, FakeTask("wait", result="hang"))
    first = make_backend(fake, tmp_path)
    keys = await first.submit(job_for(dag_id))
    await first.stop(keys)
    await first.aclose()
    again = make_backend(fake, tmp_path)  # a restarted ASCOB: nothing shared but the keys
    assert (await final(again, keys)).status is BackendStatus.ABORTED
    await again.aclose()


async def test_stop_of_a_finished_run_leaves_its_outcome(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    dag_id = new_dag(fake)
    keys = await backend.submit(job_for(dag_id))
    await final(backend, keys)
    await backend.stop(keys)
    assert (await backend.status(keys)).status is BackendStatus.SUCCEEDED
    assert not any(m == "PATCH" and dag_id in p for m, p in fake.requests)


async def test_a_run_failing_on_its_own_is_failed_not_aborted(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    keys = await backend.submit(job_for(new_dag(fake, FakeTask("x", result="failed"))))
    assert (await final(backend, keys)).status is BackendStatus.FAILED


# --------------------------------------------------------------------------- re-attach, faults


async def test_a_new_process_reattaches_midway(fake: FakeAirflow, tmp_path: Path) -> None:
    lines = [f"line {i}" for i in range(8)]
    dag_id = new_dag(fake, FakeTask("main", lines), line_interval=0.1)
    first = make_backend(fake, tmp_path)
    keys = await first.submit(job_for(dag_id))
    await until(first, keys, BackendStatus.RUNNING)
    early = await first.output(keys, 0)
    await first.aclose()
    again = make_backend(fake, tmp_path)
    assert (await final(again, dict(keys))).status is BackendStatus.SUCCEEDED
    rest = await again.output(dict(keys), early.next_offset)
    assert (early.text + rest.text).count("line 7") == 1 and not rest.more
    assert len(fake.runs_of(dag_id)) == 1
    await again.aclose()


@pytest.mark.parametrize("kind", ["500", "502", "503", "malformed", "hang"])
async def test_faults_while_polling_are_unavailable_never_final(
    fake: FakeAirflow, backend: AirflowBackend, kind: str
) -> None:
    dag_id = new_dag(fake)
    keys = await backend.submit(job_for(dag_id))
    await final(backend, keys)
    run_path = rf"/dags/{dag_id}/dagRuns/[^/]+$"
    fake.faults.add("GET", run_path, kind, seconds=2)
    with pytest.raises(BackendUnavailable):
        await backend.status(keys)
    fake.faults.add("GET", r"/taskInstances$", kind, seconds=2)
    with pytest.raises(BackendUnavailable):
        await backend.output(keys, 0)
    assert (await backend.status(keys)).status is BackendStatus.SUCCEEDED  # fault gone


async def test_a_vanished_dag_run_is_not_found(fake: FakeAirflow, backend: AirflowBackend) -> None:
    from backends import JobNotFound

    keys = await backend.submit(job_for(new_dag(fake)))
    with pytest.raises(JobNotFound):
        await backend.status({**keys, "airflowDagRunId": "ascob-1-gone"})


# --------------------------------------------------------------------------- Airflow 3's JWT


async def test_jwt_is_renewed_before_it_expires(fake3: FakeAirflow, tmp_path: Path) -> None:
    fake3.jwt_lifetime = 2.0  # renewed a tenth of its life early: after 1.8 s
    backend = make_backend(fake3, tmp_path)
    try:
        logins = fake3.logins
        keys = await backend.submit(job_for(new_dag(fake3)))
        assert fake3.logins == logins + 1
        await asyncio.sleep(1.85)
        requests = len(fake3.requests)
        assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
        assert fake3.logins == logins + 2
        # before the old token was refused: the login is the first call after the pause
        assert fake3.requests[requests] == ("POST", "/auth/token")
    finally:
        fake3.jwt_lifetime = 3600.0
        await backend.aclose()


@pytest.mark.parametrize("how", ["expired", "new-server-key"])
async def test_a_refused_jwt_is_renewed_and_the_call_repeated(
    fake3: FakeAirflow, tmp_path: Path, how: str
) -> None:
    backend = make_backend(fake3, tmp_path)
    try:
        dag_id = new_dag(fake3)
        keys = await backend.submit(job_for(dag_id))
        logins = fake3.logins
        if how == "expired":
            fake3.expire_tokens()  # 401 Token Expired
        else:
            fake3._key = os.urandom(16)  # 403 Invalid JWT token
        assert (await final(backend, keys)).status is BackendStatus.SUCCEEDED
        assert fake3.logins == logins + 1
        # and a trigger refused for its token is repeated once, creating one run
        fake3.expire_tokens()
        again = await backend.submit(job_for(dag_id))
        assert len(fake3.runs_of(dag_id)) == 2 and again != keys
    finally:
        await backend.aclose()


async def test_jwt_logins_are_not_repeated_per_call(fake3: FakeAirflow, tmp_path: Path) -> None:
    backend = make_backend(fake3, tmp_path)
    logins = fake3.logins
    keys = await backend.submit(job_for(new_dag(fake3)))
    await final(backend, keys)
    await backend.output(keys)
    assert fake3.logins == logins + 1
    await backend.aclose()


# --------------------------------------------------------------------------- issue 22: output


async def follow(backend: AirflowBackend, keys: dict[str, str]) -> str:
    """What a reader following by offset gets, until the output is final."""
    pieces, _ = await read_all(backend, keys)
    return "".join(pieces)


async def test_live_output_is_append_only_and_matches_the_final_text(
    fake3: FakeAirflow, tmp_path: Path
) -> None:
    """Airflow 3 adds "where the log was read from" notes while a task runs (a path, "Could not
    read served logs: ...") and changes them once it ended: none of it is output, and a reader
    following by offset gets exactly the final text."""
    backend = make_backend(fake3, tmp_path)
    lines = [f"row {i}" for i in range(8)]
    dag_id = new_dag(fake3, FakeTask("a", lines), FakeTask("b", lines), line_interval=0.1)
    keys = await backend.submit(job_for(dag_id))
    followed = await follow(backend, keys)
    final = (await make_backend(fake3, tmp_path).output(keys, 0)).text
    await backend.aclose()
    assert followed.encode() == final.encode()
    for noise in ("Could not read served logs", "/opt/airflow/logs", "::endgroup::", "::group::"):
        assert noise not in final
    shown = [line.split(" - ", 1)[-1] for line in final.splitlines()]
    assert shown == ["=== a (try 1) ===", *lines, "=== b (try 1) ===", *lines]


class _Rewriting:
    """A stand-in client whose log of one running try changes lines it gave before."""

    api = "v2"

    def __init__(self) -> None:
        self.reads = [["one", "two"], ["ONE", "two", "three"], ["two", "three", "four", "five"]]

    async def task_log_entries(self, *where: Any) -> list[Any]:
        return [{"event": e} for e in self.reads.pop(0)]


async def test_a_log_that_rewrites_itself_never_moves_served_bytes(tmp_path: Path) -> None:
    from backends.airflow.logs import TaskLogs

    logs = TaskLogs(tmp_path)
    ti = {"task_id": "t", "map_index": -1, "try_number": 1, "state": "running", "start_date": "x"}
    client: Any = _Rewriting()
    first, _ = await logs.text(client, "i", "d", "r", [ti])
    second, complete = await logs.text(client, "i", "d", "r", [ti])
    assert second.startswith(first) and second == first + "three\n" and not complete
    # and a restarted ASCOB (a new TaskLogs on the same folder) goes on from the same text
    again, _ = await TaskLogs(tmp_path).text(client, "i", "d", "r", [{**ti, "state": "success"}])
    assert again == second + "five\n"


async def test_the_exception_of_a_failed_task_is_in_the_output(
    fake3: FakeAirflow, tmp_path: Path
) -> None:
    from tests.fakes.fake_airflow import EXCEPTION

    backend = make_backend(fake3, tmp_path)
    keys = await backend.submit(job_for(new_dag(fake3, FakeTask("bash", result="failed"))))
    await final(backend, keys)
    text = (await backend.output(keys)).text
    await backend.aclose()
    assert f"AirflowException: {EXCEPTION}" in text
    assert "ERROR - Task failed with exception\nTraceback (most recent call last):\n" in text


async def test_a_stopped_runs_output_gets_what_its_task_printed_while_stopping(
    fake3: FakeAirflow, tmp_path: Path
) -> None:
    """Airflow marks the task failed at once; its process logs on until it is killed: ASCOB
    says the run is still stopping (RUNNING) until then, and the output keeps those lines."""
    from tests.fakes.fake_airflow import KILLED_LINE

    backend = make_backend(fake3, tmp_path)
    lines = [f"tick {i}" for i in range(100)]
    dag_id = new_dag(fake3, FakeTask("tick", lines), line_interval=0.1, kill_delay=1.5)
    keys = await backend.submit(job_for(dag_id))
    await until(backend, keys, BackendStatus.RUNNING)
    await asyncio.sleep(0.3)
    await backend.stop(keys)
    stopping = await backend.status(keys)
    assert stopping.status is BackendStatus.RUNNING and "stopping" in (stopping.message or "")
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    chunk = await backend.output(keys)
    await backend.aclose()
    assert not chunk.more
    after = chunk.text.split(STOPPED_LINE, 1)[1]
    assert "tick" in after and after.rstrip().endswith(KILLED_LINE)


async def test_a_stopped_task_that_never_says_it_is_over_ends_after_the_grace(
    fake3: FakeAirflow, tmp_path: Path
) -> None:
    backend = make_backend(fake3, tmp_path)
    backend._logs.grace = 1.0
    dag_id = new_dag(fake3, FakeTask("tick", ["x"] * 500), line_interval=0.1, kill_delay=600)
    keys = await backend.submit(job_for(dag_id))
    await until(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys)
    assert (await backend.status(keys)).status is BackendStatus.RUNNING
    await asyncio.sleep(1.1)
    assert (await final(backend, keys)).status is BackendStatus.ABORTED
    assert not (await backend.output(keys)).more
    await backend.aclose()


async def test_tasks_that_never_ran_have_no_section(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    """Airflow 3 dates skipped and upstream-failed tasks with try number 0 (nothing ran)."""
    dag_id = new_dag(fake, FakeTask("extract"), FakeTask("load", result="failed"), FakeTask("end"))
    keys = await backend.submit(job_for(dag_id))
    await final(backend, keys)
    text = (await backend.output(keys)).text
    assert "=== load (try 1) ===" in text and "=== end" not in text


async def test_a_succeeded_run_says_so_not_a_stale_progress_note(
    fake: FakeAirflow, backend: AirflowBackend
) -> None:
    keys = await backend.submit(job_for(new_dag(fake)))
    report = await final(backend, keys)
    assert report.status is BackendStatus.SUCCEEDED
    assert report.message == f"dag run {keys['airflowDagRunId']} succeeded"


async def test_a_queued_dag_run_says_why(fake: FakeAirflow, backend: AirflowBackend) -> None:
    dag_id = new_dag(fake, FakeTask("main", result="hang"), max_active_runs=1)
    first = await backend.submit(job_for(dag_id))
    await until(backend, first, BackendStatus.RUNNING)
    second = await backend.submit(job_for(dag_id))
    fake.run(dag_id, second["airflowDagRunId"]).state_override = "queued"
    report = await backend.status(second)
    assert report.status is BackendStatus.QUEUED
    assert report.message == (
        f"dag run {second['airflowDagRunId']} is queued in Airflow: DAG {dag_id} allows 1 active "
        "run(s) at once (max_active_runs) and 1 running"
    )
    await backend.stop(first)
    await backend.stop(second)


async def test_api_v1_against_airflow_3_says_to_use_v2(fake3: FakeAirflow, tmp_path: Path) -> None:
    backend = make_backend(fake3, tmp_path, api="v1")
    with pytest.raises(SubmitRefused, match=r'404.*api/v1 has been removed.*set api = "v2"'):
        await backend.submit(job_for(new_dag(fake3)))
    await backend.aclose()
