"""``commandBackend`` with real processes: the script ``tests/fakes/command_job.py`` run through
the runner. Parameters as environment variables, every status mapping, output read while it
grows, stop and forced stop (the whole process group gone), timeout, bad configuration, and
re-attachment from a brand-new registry (as after an ASCOB restart), including a reused pid."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from backends import (
    BackendRegistry,
    BackendStatus,
    Job,
    JobNotFound,
    SpecRejected,
    StatusReport,
    SubmitRefused,
)
from backends.command import CommandBackend, _decode
from backends.command.jobdir import read_json, start_time
from tests.harness import wait_until

SCRIPT = str(Path(__file__).resolve().parent / "fakes" / "command_job.py")


def script(*args: str) -> list[str]:
    return [sys.executable, SCRIPT, *args]


def config(tmp_path: Path, **extra: dict[str, Any]) -> dict[str, Any]:
    marker = str(tmp_path / "starts.txt")
    return {
        "command": {
            "ok": {"argv": script("--marker", marker)},
            "slow": {"argv": script("--interval", "0.6", "--lines", "one,two,three")},
            "fails": {"argv": script("--outcome", "exit:7")},
            "hang": {"argv": script("--outcome", "hang", "--child-pid-file", "child.pid")},
            "stubborn": {"argv": script("--outcome", "hang", "--ignore-term")},
            "suicide": {
                "argv": [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)"]
            },
            "short": {"argv": script("--outcome", "hang"), "timeout_seconds": 1},
            "env": {
                "argv": [
                    sys.executable,
                    "-c",
                    "import os; [print(f'{k}={v}') for k, v in sorted(os.environ.items())]",
                ],
                "env": {"EXTRA": "from-config"},
                "pass_env": ["TEST_COMMAND_SECRET"],
            },
            "missing": {"argv": ["no-such-program-for-ascob"]},
            "nowhere": {"argv": script(), "workdir": str(tmp_path / "absent")},
            **extra,
        }
    }


def load(tmp_path: Path, cfg: Mapping[str, Any] | None = None) -> CommandBackend:
    registry = BackendRegistry.load(tmp_path, cfg or config(tmp_path))
    assert [s.state for s in registry.states if s.id == "commandBackend"] == ["loaded"]
    backend = registry.get("commandBackend")
    assert isinstance(backend, CommandBackend)
    return backend


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[CommandBackend]:
    made = load(tmp_path)
    yield made
    # leave no process behind: kill the group of every job still running
    for command in (made.jobs_dir).glob("*/command.json"):
        if not (command.parent / "result.json").exists():
            data = read_json(command) or {}
            try:
                os.killpg(int(data["pid"]), signal.SIGKILL)
            except (ProcessLookupError, KeyError):
                pass


_run_ids = iter(range(1, 10**6))


def job(instance: str, parameters: Mapping[str, str] | None = None, run_id: int = 0) -> Job:
    return Job(
        run_id=run_id or next(_run_ids),
        description="command test",
        submitter="tester",
        labels={"command_instance": instance},
        parameters=dict(parameters or {}),
        webhook_id=uuid.uuid4().hex,
    )


async def wait_final(
    backend: CommandBackend, keys: Mapping[str, str], within: float = 30
) -> StatusReport:
    deadline = time.monotonic() + within
    while not (report := await backend.status(keys)).status.is_final:
        assert time.monotonic() < deadline, f"still {report} after {within} s"
        await asyncio.sleep(0.1)
    return report


async def wait_output(backend: CommandBackend, keys: Mapping[str, str], text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in (await backend.output(keys, 0)).text:
        assert time.monotonic() < deadline, f"{text!r} never printed"
        await asyncio.sleep(0.1)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def command_pid(backend: CommandBackend, keys: Mapping[str, str]) -> int:
    data = wait_until(
        lambda: read_json(backend.context.data_dir / keys["commandJobDir"] / "command.json"),
        10,
        "command.json",
    )
    return int(data["pid"])


# --------------------------------------------------------------------------- parameters


async def test_parameters_and_run_identity_arrive_as_environment_variables(
    backend: CommandBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_COMMAND_SECRET", "passed on purpose")
    monkeypatch.setenv("ASCOB_ROOT_TOKEN", "must-not-leak")
    submitted = job("env", {"GREETING": "hello there", "count_2": "two words & $HOME"})
    keys = await backend.submit(submitted)
    assert (await wait_final(backend, keys)).status is BackendStatus.SUCCEEDED
    lines = (await backend.output(keys, 0)).text.splitlines()
    assert "ASCOB_PARAM_GREETING=hello there" in lines
    assert "ASCOB_PARAM_count_2=two words & $HOME" in lines  # no shell: nothing expanded
    assert f"ASCOB_RUN_ID={submitted.run_id}" in lines
    assert f"ASCOB_WEBHOOK_ID={submitted.webhook_id}" in lines
    assert "EXTRA=from-config" in lines
    assert "TEST_COMMAND_SECRET=passed on purpose" in lines
    assert not any("must-not-leak" in line for line in lines)  # ASCOB's own secrets stay home


@pytest.mark.parametrize("name", ["with-dash", "dotted.name", "spa ce", "é", ""])
async def test_invalid_parameter_names_are_refused_before_anything_starts(
    backend: CommandBackend, tmp_path: Path, name: str
) -> None:
    with pytest.raises(SpecRejected) as info:
        await backend.submit(job("ok", {"GOOD": "1", name: "x"}))
    assert isinstance(info.value, SubmitRefused)  # the engine fails the run with the message
    assert "letters, digits and underscores" in str(info.value)
    assert not (tmp_path / "starts.txt").exists()
    assert not backend.jobs_dir.exists() or not any(backend.jobs_dir.iterdir())


# --------------------------------------------------------------------------- statuses


async def test_exit_code_zero_succeeds(backend: CommandBackend) -> None:
    keys = await backend.submit(job("ok"))
    assert set(keys) >= {"commandJobDir", "commandPid", "commandStartTime"}
    report = await wait_final(backend, keys)
    assert report.status is BackendStatus.SUCCEEDED and report.message is None


async def test_non_zero_exit_fails_with_the_code(backend: CommandBackend) -> None:
    keys = await backend.submit(job("fails"))
    report = await wait_final(backend, keys)
    assert report.status is BackendStatus.FAILED
    assert report.message == "exit code 7"


async def test_a_parameter_drives_the_outcome(backend: CommandBackend) -> None:
    keys = await backend.submit(job("ok", {"OUTCOME": "failed"}))
    report = await wait_final(backend, keys)
    assert (report.status, report.message) == (BackendStatus.FAILED, "exit code 3")
    assert "something went wrong" in (await backend.output(keys, 0)).text  # stderr too


async def test_killed_by_a_signal_fails(backend: CommandBackend) -> None:
    keys = await backend.submit(job("suicide"))
    report = await wait_final(backend, keys)
    assert report.status is BackendStatus.FAILED
    assert report.message is not None and "SIGKILL" in report.message


async def test_a_program_that_does_not_exist_is_refused(backend: CommandBackend) -> None:
    with pytest.raises(SubmitRefused, match="no-such-program-for-ascob"):
        await backend.submit(job("missing"))


async def test_a_missing_workdir_is_refused(backend: CommandBackend, tmp_path: Path) -> None:
    with pytest.raises(SubmitRefused, match="absent is not a directory"):
        await backend.submit(job("nowhere"))


async def test_a_program_the_runner_cannot_start_fails_with_the_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)  # passes the check at submission, but exec fails
    backend = load(tmp_path, {"command": {"broken": {"argv": [str(broken)]}}})
    keys = await backend.submit(job("broken"))
    report = await wait_final(backend, keys)
    assert report.status is BackendStatus.FAILED
    assert report.message is not None and report.message.startswith("cannot start")
    assert "[ascob] cannot start" in (await backend.output(keys, 0)).text


async def test_timeout_kills_the_command_and_fails(backend: CommandBackend) -> None:
    keys = await backend.submit(job("short"))
    pgid = command_pid(backend, keys)
    report = await wait_final(backend, keys)
    assert report.status is BackendStatus.FAILED
    assert report.message == "timed out after 1 s (stopped)"
    assert "timed out after 1 s" in (await backend.output(keys, 0)).text
    wait_until(lambda: group_gone(pgid), 10, "the process group to be gone")


# --------------------------------------------------------------------------- output


async def test_output_grows_while_the_command_runs(backend: CommandBackend) -> None:
    keys = await backend.submit(job("slow"))
    await wait_output(backend, keys, "one\n")
    early = await backend.output(keys, 0)
    assert early.more and "three" not in early.text
    assert (await backend.status(keys)).status is BackendStatus.RUNNING
    text, offset = early.text, early.next_offset
    deadline = time.monotonic() + 30
    while True:
        chunk = await backend.output(keys, offset)
        assert chunk.next_offset >= offset
        text, offset = text + chunk.text, chunk.next_offset
        if not chunk.more:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert text == (await backend.output(keys, 0)).text
    assert text.endswith("one\ntwo\nthree\n")
    assert len(text.encode()) == offset
    tail = await backend.output(keys, offset)
    assert (tail.text, tail.more) == ("", False)


def test_an_incomplete_utf8_character_waits_for_the_next_read() -> None:
    data = "née".encode()
    assert _decode(data[:2], final=False) == ("n", 1)
    assert _decode(data, final=False) == ("née", 4)
    assert _decode(data[:2], final=True)[1] == 2  # nothing more will come: shown as is


# --------------------------------------------------------------------------- stop


async def test_stop_terminates_the_whole_process_group(
    backend: CommandBackend,
) -> None:
    keys = await backend.submit(job("hang"))
    pgid = command_pid(backend, keys)
    job_dir = backend.context.data_dir / keys["commandJobDir"]
    pid_file = job_dir / "child.pid"
    child = int(
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, "the child")
    )
    await wait_output(backend, keys, "third line")
    await backend.stop(keys)
    report = await wait_final(backend, keys)
    assert report.status is BackendStatus.ABORTED
    assert report.message is not None and "stopped by ASCOB" in report.message
    wait_until(lambda: group_gone(pgid), 10, "the process group to be gone")
    wait_until(lambda: start_time(child) is None, 10, "the command's child to be gone")


async def test_forced_stop_kills_what_ignores_sigterm(backend: CommandBackend) -> None:
    keys = await backend.submit(job("stubborn"))
    pgid = command_pid(backend, keys)
    await wait_output(backend, keys, "third line")
    await backend.stop(keys)
    await asyncio.sleep(1.5)
    assert (await backend.status(keys)).status is BackendStatus.RUNNING  # SIGTERM ignored
    await backend.stop(keys, force=True)
    report = await wait_final(backend, keys)
    assert report.status is BackendStatus.ABORTED
    assert report.message is not None and "forced stop" in report.message
    assert "SIGKILL" in report.message
    wait_until(lambda: group_gone(pgid), 10, "the process group to be gone")


async def test_stop_of_a_finished_job_changes_nothing(backend: CommandBackend) -> None:
    keys = await backend.submit(job("ok"))
    await wait_final(backend, keys)
    await backend.stop(keys, force=True)
    assert (await backend.status(keys)).status is BackendStatus.SUCCEEDED


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ({"argv": "ansible-playbook site.yml"}, "argv, a non-empty list"),
        ({"argv": []}, "argv, a non-empty list"),
        ({}, "needs argv"),
        ({"argv": ["x"], "env": {"BAD-NAME": "1"}}, "env must be a table"),
        ({"argv": ["x"], "timeout_seconds": -1}, "timeout_seconds"),
        ({"argv": ["x"], "shell": True}, "unknown settings: shell"),
    ],
)
def test_bad_configuration_is_reported_by_the_registry(
    tmp_path: Path, raw: dict[str, Any], said: str
) -> None:
    good = {"argv": ["true"]}
    registry = BackendRegistry.load(tmp_path, {"command": {"broken": raw, "good": good}})
    state = next(s for s in registry.states if s.id == "commandBackend")
    assert state.state == "loaded"  # the bad instance is isolated, not fatal to the backend
    assert state.error is not None and said in state.error and "[command.broken]" in state.error
    backend = registry.get("commandBackend")
    with pytest.raises(SpecRejected, match=r"'broken' is misconfigured: \[command.broken\]"):
        backend.validate({"command_instance": "broken"})
    backend.validate({"command_instance": "good"})


def test_labels_select_a_configured_instance(tmp_path: Path) -> None:
    backend = load(tmp_path)
    with pytest.raises(SpecRejected, match="'nope' is not configured"):
        backend.validate({"command_instance": "nope"})
    with pytest.raises(SpecRejected, match="command_instance is required"):
        backend.validate({})
    single = load(tmp_path, {"command": {"only": {"argv": ["true"]}}})
    single.validate({})  # one instance: the label may be left out


# --------------------------------------------------------------------------- re-attach


async def test_a_new_registry_reattaches_while_running_and_after_the_end(
    backend: CommandBackend, tmp_path: Path
) -> None:
    keys = await backend.submit(job("slow"))
    restarted = load(tmp_path)  # nothing shared with the first but the keys and the data dir
    assert (await restarted.status(dict(keys))).status is BackendStatus.RUNNING
    assert (await wait_final(restarted, dict(keys))).status is BackendStatus.SUCCEEDED
    again = load(tmp_path)
    assert (await again.status(dict(keys))).status is BackendStatus.SUCCEEDED
    assert (await again.output(dict(keys), 0)).text.endswith("one\ntwo\nthree\n")


async def test_submitting_the_same_run_twice_starts_it_once(
    backend: CommandBackend, tmp_path: Path
) -> None:
    first = await backend.submit(job("ok", run_id=424242))
    second = await load(tmp_path).submit(job("ok", run_id=424242))
    assert first == second
    await wait_final(backend, first)
    assert (tmp_path / "starts.txt").read_text().count("424242 ") == 1


async def test_a_dead_runner_fails_the_run_and_a_reused_pid_is_not_mistaken_for_it(
    backend: CommandBackend, tmp_path: Path
) -> None:
    keys = await backend.submit(job("hang"))
    pgid = command_pid(backend, keys)
    os.kill(int(keys["commandPid"]), signal.SIGKILL)  # the runner dies: no result ever
    os.killpg(pgid, signal.SIGKILL)
    report = await wait_final(load(tmp_path), keys)
    assert (report.status, report.message) == (
        BackendStatus.FAILED,
        "the runner died without an exit code",
    )
    # another live process now holds the pid the keys name: its start time gives it away
    other = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        reused = {**keys, "commandPid": str(other.pid)}
        assert start_time(other.pid) != int(keys["commandStartTime"])
        report = await load(tmp_path).status(reused)
        assert report.status is BackendStatus.FAILED
        honest = {**reused, "commandStartTime": str(start_time(other.pid))}
        assert (await backend.status(honest)).status is BackendStatus.RUNNING  # the check bites
    finally:
        other.kill()
        await other.wait()


async def test_keys_this_host_cannot_follow_are_job_not_found(
    backend: CommandBackend,
) -> None:
    keys = await backend.submit(job("hang"))
    command_pid(backend, keys)
    with pytest.raises(JobNotFound, match="started on elsewhere"):
        await backend.status({**keys, "commandJobDir": "jobs/0-gone", "commandHost": "elsewhere"})
    with pytest.raises(JobNotFound, match="runs on host elsewhere"):
        await backend.status({**keys, "commandHost": "elsewhere"})  # shared disk, other host
    with pytest.raises(JobNotFound):
        await backend.status({**keys, "commandJobDir": "../../etc"})
    with pytest.raises(JobNotFound):
        await backend.output({"commandJobDir": "jobs/none"}, 0)
