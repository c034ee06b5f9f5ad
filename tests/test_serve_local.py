"""The quick start's `ascob serve`, without PREFECT_API_URL: it starts a Prefect server of its own,
runs jobs on it, and stops it again when it is stopped itself."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.harness import Ascob, _healthy, free_port, wait_until

pytestmark = pytest.mark.system


DUMMY = {"_execution_backend_id": "dummyBackend"}


def test_serve_starts_and_stops_its_own_prefect_server(workdir: Path) -> None:
    port = free_port()
    app = Ascob(workdir, "", env={"ASCOB_PREFECT_PORT": str(port)})
    app.env.pop("PREFECT_API_URL")
    assert app.proc.proc is None
    app.proc.env.pop("PREFECT_API_URL")
    prefect_health = f"http://127.0.0.1:{port}/api/health"
    try:
        app.start(timeout=180)
        assert _healthy(prefect_health)
        run_id = app.submit({"description": "dummy", "labels": DUMMY})
        app.wait_status(run_id, "SUCCEDED", timeout=90)
        # SIGTERM to the main process alone, as `kill` or a service manager sends it
        assert app.proc.proc is not None
        app.proc.proc.send_signal(signal.SIGTERM)
        assert app.proc.proc.wait(60) == 0, app.proc.tail()
        wait_until(lambda: not _healthy(prefect_health), 30, "its Prefect server to stop")
    finally:
        app.stop()  # the whole process group, whatever happened
