"""The local Prefect server that ``ascob serve`` starts when PREFECT_API_URL is not set.

It belongs to its installation: its files are in ``$ASCOB_HOME/prefect``, and its UI reads from
this very server (``PREFECT_UI_API_URL``; behind a proxy, ``ASCOB_PUBLIC_PREFECT_URL`` names
the address browsers use). It listens on ``ASCOB_PREFECT_HOST`` (127.0.0.1; the container image
says 0.0.0.0 so that its UI is reachable through a published port). ASCOB itself always talks
to it over loopback; a browser cannot open a wildcard address, so without a public URL the UI
of a server on 0.0.0.0 reads from ``http://localhost:PORT``, which is said in the log.

A Prefect server that already answers on the port is used only if it is this installation's
own (left running by a previous life: same Prefect home); a server of anyone else is never used
by accident: sharing one is said with PREFECT_API_URL.
"""

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


# Settings of the local Prefect server (its process only; an operator's own environment wins).
# Measured with bench/prefect_cost.py; docs/benchmarks.md ("Where the Prefect server's CPU per
# run goes") has the figures and says why the other candidates were not kept.
LOCAL_SERVER_SETTINGS = {
    # the task-run recorder writes the task runs and their states from the engines' task-run
    # events, by default one event per transaction (12 per run): in batches instead, at most
    # a second late in the UI
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    # the event persister writes events and their related resources (16 and ~94 rows per run)
    # in batches of 20 by default
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
    # loops for what ASCOB never uses: workers and work pools, paused flow runs, leases of
    # Prefect's global concurrency limits (ASCOB's locks are its own)
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "false",
}


def local_server_env(home: Path, environ: dict[str, str]) -> dict[str, str]:
    """The local Prefect server's environment: ``environ``, ASCOB's Prefect settings, then the
    server's own where ``environ`` does not set them."""
    env = {**environ, **prefect_env(home)}
    for key, value in LOCAL_SERVER_SETTINGS.items():
        env.setdefault(key, value)
    env.pop("PREFECT_API_URL", None)
    return env


WILDCARDS = {"0.0.0.0", "::", ""}


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def local_api_url(host: str, port: int) -> str:
    """The server's API as ASCOB reaches it on this machine (loopback for a wildcard bind)."""
    if host in WILDCARDS:
        host = "::1" if ":" in host else "127.0.0.1"
    return f"http://{_url_host(host)}:{port}/api"


def ui_url(host: str, port: int, public_url: str | None) -> str:
    """The address browsers open for the UI (and, + ``/api``, the one the UI reads from)."""
    if public_url:
        return public_url.rstrip("/")
    if host in WILDCARDS:
        return f"http://localhost:{port}"
    return f"http://{_url_host(host)}:{port}"


class ForeignPrefectServer(RuntimeError):
    """Another Prefect server (not this installation's) answers on the local server's port."""


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(api_url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class LocalPrefectServer:
    """``prefect server start`` as a child process, stopped with ASCOB."""

    def __init__(
        self,
        home: Path,
        host: str = "127.0.0.1",
        port: int = 4200,
        public_url: str | None = None,
    ) -> None:
        self.home = home
        self.host = host
        self.port = port
        self.api_url = local_api_url(host, port)
        # what browsers open: the UI, and the API the UI reads its data from
        self.ui_url = ui_url(host, port, public_url)
        self.ui_url_guessed = host in WILDCARDS and not public_url
        self.proc: subprocess.Popen[bytes] | None = None

    def _owner_home(self) -> str | None:
        """The Prefect home of the server that answers on the port (None: cannot tell)."""
        try:
            r = httpx.get(self.api_url + "/admin/settings", timeout=5.0)
            r.raise_for_status()
            home = r.json().get("home")
        except (httpx.HTTPError, ValueError):
            return None
        return str(home) if home else None

    def start(self, timeout: float = 120.0) -> str:
        if healthy(self.api_url):
            ours = str((self.home / "prefect").resolve())
            owner = self._owner_home()
            if owner is not None and str(Path(owner).expanduser().resolve()) == ours:
                log.info("this installation's Prefect server still answers at %s", self.api_url)
                return self.api_url
            raise ForeignPrefectServer(
                f"a Prefect server that is not this installation's ({ours}) already answers "
                f"on {self.host}:{self.port} (its home: {owner or 'unknown'}). Set "
                "ASCOB_PREFECT_PORT to a free port to start this installation's own server, "
                f"or PREFECT_API_URL={self.api_url} to share that server on purpose"
            )
        if self.ui_url_guessed:
            log.warning(
                "the Prefect UI listens on all interfaces (ASCOB_PREFECT_HOST=%s) and its pages "
                "read their data from %s/api: right for a browser on this machine or through a "
                "published port (docker run -p %d:%d). Browsers that reach this server by "
                "another address need ASCOB_PUBLIC_PREFECT_URL set to it (e.g. "
                "http://ascob.example.com:%d)",
                self.host,
                self.ui_url,
                self.port,
                self.port,
                self.port,
            )
        (self.home / "prefect").mkdir(parents=True, exist_ok=True)
        logfile = (self.home / "prefect-server.log").open("ab")
        env = local_server_env(self.home, dict(os.environ))
        # the UI asks /ui-settings where its API is: this server, not Prefect's default port
        env["PREFECT_UI_API_URL"] = self.ui_url + "/api"
        env["PREFECT_UI_URL"] = self.ui_url
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
