"""The local Prefect server that ``ascob serve`` starts when PREFECT_API_URL is not set."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

log = logging.getLogger("ascob.prefect")


def prefect_env(home: Path) -> dict[str, str]:
    """Environment for Prefect inside ASCOB: its files in ASCOB_HOME, no phoning home."""
    return {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(api_url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class LocalPrefectServer:
    """``prefect server start`` as a child process, stopped with ASCOB."""

    def __init__(self, home: Path, host: str = "127.0.0.1", port: int = 4200) -> None:
        self.home = home
        self.host = host
        self.port = port
        self.api_url = f"http://{host}:{port}/api"
        self.ui_url = f"http://{host}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> str:
        if healthy(self.api_url):
            log.info("a Prefect server already answers at %s; using it", self.api_url)
            return self.api_url
        (self.home / "prefect").mkdir(parents=True, exist_ok=True)
        logfile = (self.home / "prefect-server.log").open("ab")
        env = {**os.environ, **prefect_env(self.home)}
        env.pop("PREFECT_API_URL", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                self.host,
                "--port",
                str(self.port),
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the Prefect server exited with {self.proc.returncode}; "
                    f"see {self.home / 'prefect-server.log'}"
                )
            if healthy(self.api_url, timeout=1.0):
                log.info("Prefect server ready at %s (UI %s)", self.api_url, self.ui_url)
                return self.api_url
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the Prefect server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
