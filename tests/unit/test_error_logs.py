"""A 500 costs nothing and leaks nothing: plain tracebacks without locals, secrets masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ascob_api.logsetup import configure_logging, redact
from ascob_api.service import Services
from tests.unit.conftest import ROOT, WEBHOOK

DB_PASSWORD = "db-pa55word-xyz"
BACKEND_TOKEN = "jenkins-api-token-123"


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    configure_logging("console", "INFO")
    yield capsys
    redact([])
    root.handlers[:], root.level = saved


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_an_unexpected_error_logs_no_secret_and_no_locals(
    services: Services, api: TestClient, logs: pytest.CaptureFixture[str], fmt: str
) -> None:
    configure_logging(fmt, "INFO")
    services.settings.database_url = f"postgresql://ascob:{DB_PASSWORD}@db.invalid/ascob"
    redact([*services.settings.secret_values(), BACKEND_TOKEN])
    settings = services.settings

    def broken(**_: Any) -> Any:
        secret_local = ROOT  # a local variable holding a secret: must not be printed
        raise RuntimeError(
            f"boom with {settings!r} and {BACKEND_TOKEN} ({len(secret_local)} chars)"
        )

    services.repo.search = broken  # type: ignore[method-assign]
    client = TestClient(api.app, headers={"X-Api-Token": ROOT}, raise_server_exceptions=False)
    r = client.post("/api/search/runs", json={})
    assert r.status_code == 500
    assert r.json() == {"status": 500, "error": "internal error; see the server log"}
    out = logs.readouterr()
    text = out.err + out.out
    assert "RuntimeError: boom" in text  # the error is there, as plain text
    assert "Settings(home=" in text and "root_token" not in text
    for secret in (ROOT, WEBHOOK, DB_PASSWORD, BACKEND_TOKEN):
        assert secret not in text, f"{secret} leaked into the log"
    assert "secret_local" not in text  # no local variables
    assert api.get("/api/health").status_code == 200  # the API goes on answering


def test_settings_name_every_secret(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JENKINS_TOKEN_FOR_TEST", BACKEND_TOKEN)
    services.settings.database_url = f"postgresql://ascob:{DB_PASSWORD}@db/ascob"
    services.settings.__dict__["backend_config"] = {
        "jenkins": {"ci": {"url": "http://j", "token_env": "JENKINS_TOKEN_FOR_TEST"}}
    }
    found = services.settings.secret_values()
    assert {ROOT, WEBHOOK, DB_PASSWORD, BACKEND_TOKEN} <= set(found)


def _log_as_the_engine_does(logs: pytest.CaptureFixture[str], fmt: str) -> str:
    configure_logging(fmt, "INFO")
    root = logging.getLogger()
    # another handler formats the record first (as Prefect's API log handler does): the record
    # then has a ``message`` attribute
    root.handlers.insert(0, logging.StreamHandler(io.StringIO()))
    # the fields Prefect's run logger adds to every record of a flow run
    engine = {"flow_name": "ascob-run", "flow_run_id": "0f1e-2d3c", "flow_run_name": "brave-otter"}
    logs.readouterr()
    logging.getLogger("ascob.flow").info(
        "run %s: dispatched to %s", 42, "dummyBackend", extra={**engine, "runId": 42}
    )
    out = logs.readouterr()
    return out.err + out.out


def test_the_console_log_is_one_readable_line_per_event(
    logs: pytest.CaptureFixture[str],
) -> None:
    text = _log_as_the_engine_does(logs, "console")
    (line,) = text.strip().splitlines()
    assert "run 42: dispatched to dummyBackend" in line and "runId=42" in line
    assert "message=" not in line, line
    for field in ("flow_name", "flow_run_id", "flow_run_name"):
        assert field not in line, line


def test_the_json_log_keeps_every_field(logs: pytest.CaptureFixture[str]) -> None:
    (line,) = _log_as_the_engine_does(logs, "json").strip().splitlines()
    record = json.loads(line)
    assert record["event"] == "run 42: dispatched to dummyBackend" and record["runId"] == 42
    assert record["flow_run_id"] == "0f1e-2d3c" and record["flow_name"] == "ascob-run"
    assert record["flow_run_name"] == "brave-otter"
