"""Servers the tests start on loopback and stop: Prefect, ``ascob serve``/``api``/``executor``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
ASCOB = [sys.executable, "-m", "ascob_api.cli"]
ROOT_TOKEN = "rootToken"
JOB_MANAGER_TOKEN = "jobManagerToken"
WEBHOOK_TOKEN = "webhookToken"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class Proc:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, dict(env), log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL the main process only (as a crash would)."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class PrefectServer:
    """``prefect server start`` on a free loopback port: on SQLite in its own folder (what
    ``ascob serve`` starts), or on PostgreSQL given ``database_url`` (``postgresql://…``)."""

    def __init__(self, workdir: Path, database_url: str | None = None) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        home = workdir / f"prefect-home-{self.port}"
        self.log = workdir / f"prefect-server-{self.port}.log"
        home.mkdir(parents=True, exist_ok=True)
        if database_url is None:
            database_url = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
        else:
            database_url = database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
        }
        env.pop("PREFECT_API_URL", None)
        self.proc = Proc(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env,
            self.log,
        )

    def start(self) -> PrefectServer:
        self.proc.start()
        try:
            wait_until(
                lambda: _healthy(self.api_url + "/health") or not self.proc.alive(),
                180,
                "the Prefect server",
            )
        except AssertionError:
            raise AssertionError("Prefect server did not start:\n" + self.proc.tail()) from None
        if not self.proc.alive():
            raise AssertionError("Prefect server exited:\n" + self.proc.tail())
        return self

    def stop(self) -> None:
        self.proc.stop()


class Ascob:
    """One ``ascob`` process (``serve`` by default) with its own home and deployment name."""

    def __init__(
        self,
        workdir: Path,
        prefect_api_url: str,
        command: str = "serve",
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.home = home or workdir / f"home-{uuid.uuid4().hex[:8]}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = command
        self.env = {
            **os.environ,
            "ASCOB_HOME": str(self.home),
            "ASCOB_ROOT_TOKEN": ROOT_TOKEN,
            "ASCOB_JOB_MANAGER_TOKENS": JOB_MANAGER_TOKEN,
            "ASCOB_WEBHOOK_TOKENS": WEBHOOK_TOKEN,
            "ASCOB_POLL_INTERVAL": "0.5",
            "ASCOB_DEPLOYMENT": f"ascob-test-{self.home.name}",
            "PREFECT_API_URL": prefect_api_url,
            "PREFECT_HOME": str(self.home / "prefect"),
            **(env or {}),
        }
        args = [*ASCOB, command]
        if command != "executor":
            args += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = Proc(args, self.env, self.home / f"{command}.log")
        self.http = httpx.Client(base_url=self.url, headers={"X-Api-Token": ROOT_TOKEN}, timeout=30)

    def start(self, timeout: float = 120.0) -> Ascob:
        self.proc.start()
        if self.command == "executor":
            wait_until(
                lambda: "ready" in self.proc.tail(200) or not self.proc.alive(),
                timeout,
                "the executor",
            )
        else:
            wait_until(
                lambda: _healthy(self.url + "/api/health") or not self.proc.alive(),
                timeout,
                "ascob to answer",
            )
        if not self.proc.alive():
            raise AssertionError(f"ascob {self.command} exited:\n" + self.proc.tail())
        return self

    def stop(self) -> None:
        self.proc.stop()

    def kill(self) -> None:
        self.proc.kill()

    def restart(self) -> Ascob:
        self.proc = Proc(self.proc.args, self.env, self.proc.log)
        return self.start()

    # ------------------------------------------------------------------ REST helpers

    def submit(self, spec: dict[str, Any], token: str = ROOT_TOKEN) -> int:
        r = self.http.post("/api/runs", json={"jobSpec": spec}, headers={"X-Api-Token": token})
        assert r.status_code == 200, r.text
        return int(r.json()["runId"])

    def run(self, run_id: int) -> dict[str, Any]:
        r = self.http.get(f"/api/runs/{run_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_status(self, run_id: int, *statuses: str, timeout: float = 60.0) -> dict[str, Any]:
        try:
            return dict(
                wait_until(
                    lambda: (info := self.run(run_id))["status"] in statuses and info,
                    timeout,
                    f"run {run_id} to reach {statuses}",
                )
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.proc.tail(80)}") from None
