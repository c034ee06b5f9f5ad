"""Local commands through ``ascob serve``, configured from ASCOB_CONFIG: a command that succeeds
with its output in output.txt, one stopped with DELETE (its process group gone), a refused
parameter name, and a kill -9 of ``ascob serve`` while a command runs: after the restart the run
ends SUCCEDED and the command ran once (counted by the script itself in a marker file)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.command.jobdir import read_json
from tests.harness import Ascob, PrefectServer, wait_until

SCRIPT = Path(__file__).resolve().parent / "fakes" / "command_job.py"


def write_config(workdir: Path, marker: Path) -> dict[str, str]:
    def argv(*args: str) -> str:
        return repr([sys.executable, str(SCRIPT), "--marker", str(marker), *args]).replace("'", '"')

    config = workdir / f"command-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        f"""
[command.hello]
argv = {argv("--lines", "first line,second line,third line")}

[command.forever]
argv = {argv("--outcome", "hang")}

[command.long]
argv = {argv("--lines", ",".join(f"step {i}" for i in range(20)), "--interval", "0.4")}
timeout_seconds = 300
"""
    )
    return {"ASCOB_CONFIG": str(config)}


def starts(marker: Path, run_id: int) -> int:
    if not marker.exists():
        return 0
    return sum(1 for line in marker.read_text().splitlines() if line.split()[0] == str(run_id))


def spec(instance: str, **parameters: str) -> dict[str, Any]:
    return {
        "description": "command e2e",
        "submitter": "dave",
        "labels": {"_execution_backend_id": "commandBackend", "command_instance": instance},
        "parameters": parameters,
    }


def job_dir(server: Ascob, run_id: int) -> Path:
    found = list((server.home / "backends" / "commandBackend" / "jobs").glob(f"{run_id}-*"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def marker(workdir: Path) -> Path:
    return workdir / f"command-starts-{uuid.uuid4().hex[:6]}.txt"


@pytest.fixture(scope="module")
def app(workdir: Path, prefect_server: PrefectServer, marker: Path) -> Iterator[Ascob]:
    server = Ascob(workdir, prefect_server.api_url, env=write_config(workdir, marker)).start()
    yield server
    server.stop()
    kill_leftovers(server)


def kill_leftovers(server: Ascob) -> None:
    """No command outlives the tests, whatever they asserted."""
    for command in (server.home / "backends" / "commandBackend").glob("jobs/*/command.json"):
        if not (command.parent / "result.json").exists():
            try:
                os.killpg(int((read_json(command) or {})["pid"]), 9)
            except (ProcessLookupError, KeyError):
                pass


def test_command_succeeds_with_its_output(app: Ascob, marker: Path) -> None:
    run_id = app.submit(spec("hello", GREETING="hello there"))
    app.wait_status(run_id, "SUCCEDED")
    r = app.http.get(f"/api/runs/{run_id}/output.txt")
    assert r.status_code == 200
    assert "GREETING=hello there\n" in r.text and f"ASCOB_RUN_ID={run_id}\n" in r.text
    assert r.text.endswith("first line\nsecond line\nthird line\n")
    assert r.headers["X-Ascob-More"] == "false"
    assert starts(marker, run_id) == 1


def test_delete_stops_the_command(app: Ascob) -> None:
    run_id = app.submit(spec("forever"))
    app.wait_status(run_id, "RUNNING")
    command = wait_until(lambda: read_json(job_dir(app, run_id) / "command.json"), 30, "start")
    assert app.http.delete(f"/api/runs/{run_id}").status_code == 200
    app.wait_status(run_id, "ABORTED")

    def gone() -> bool:
        try:
            os.killpg(int(command["pid"]), 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, 20, "the command's process group to be gone")
    assert (read_json(job_dir(app, run_id) / "result.json") or {}).get("signal") == 15


def test_an_invalid_parameter_name_fails_the_run(app: Ascob, marker: Path) -> None:
    run_id = app.submit(spec("hello", **{"not-a-name": "x"}))
    app.wait_status(run_id, "FAILED")
    assert starts(marker, run_id) == 0


def test_kill_and_restart_mid_command_reattaches(
    workdir: Path, prefect_server: PrefectServer
) -> None:
    marker = workdir / f"command-starts-{uuid.uuid4().hex[:6]}.txt"  # run ids start at 1 again
    server = Ascob(workdir, prefect_server.api_url, env=write_config(workdir, marker)).start()
    try:
        run_id = server.submit(spec("long"))
        server.wait_status(run_id, "RUNNING")
        wait_until(
            lambda: "step 2\n" in server.http.get(f"/api/runs/{run_id}/output.txt").text,
            30,
            "the first steps",
        )
        before = server.http.get(f"/api/runs/{run_id}/output.txt")
        assert before.headers["X-Ascob-More"] == "true"  # still running when killed
        server.kill()  # kill -9 of ascob serve; the command runs on
        server.restart()
        info = server.wait_status(run_id, "SUCCEDED", "FAILED", "IN_DOUBT", timeout=120)
        assert info["status"] == "SUCCEDED"
        assert starts(marker, run_id) == 1  # re-attached, not started again
        text = server.http.get(f"/api/runs/{run_id}/output.txt").text
        assert text.endswith("".join(f"step {i}\n" for i in range(20)))
    finally:
        server.stop()
        kill_leftovers(server)
