"""Callbacks against a loopback receiver: signed, retried while the receiver is down, recorded
durably, and never sent where the allowlist does not say."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ascob_api.callbacks import Allowlist, destination_allowed
from ascob_api.db import create_schema, make_engine
from ascob_api.main import create_app
from ascob_api.repository import Repository
from ascob_api.service import Services
from tests.fakes.server import ServerThread
from tests.unit.conftest import DUMMY, ROOT

SECRET = "callback-signing-secret"


class Receiver:
    """Records what it is sent; answers ``self.answers`` in turn, then 200."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answers: list[int] = []
        self.lock = threading.Lock()
        self.server = ServerThread(Starlette(routes=[Route("/hook", self.hook, methods=["POST"])]))

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        timestamp = request.headers["x-ascob-timestamp"]
        expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        with self.lock:
            self.received.append(
                {
                    "valid": request.headers["x-ascob-signature"]
                    == "sha256=" + expected.hexdigest(),
                    "body": json.loads(body),
                }
            )
            status = self.answers.pop(0) if self.answers else 200
        if status == 302:
            return Response(status_code=302, headers={"location": "http://127.0.0.1:9/elsewhere"})
        return Response(status_code=status)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    made.server.start()
    yield made
    made.server.stop()


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    services.settings.callback_secret = SECRET
    services.settings.callback_allowlist = ["127.0.0.0/8", "hooks.example.com"]
    with TestClient(create_app(services), headers={"X-Api-Token": ROOT}) as made:
        yield made


def wait_for(check: Any, within: float = 20) -> Any:
    deadline = time.monotonic() + within
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return found


def submit_with_callback(client: TestClient, url: str) -> int:
    r = client.post("/api/runs", json={"jobSpec": {"labels": DUMMY, "callbackUrl": url}})
    assert r.status_code == 200, r.text
    return int(r.json()["runId"])


@pytest.mark.integration  # a receiver on loopback
def test_the_final_run_info_is_posted_signed(client: TestClient, receiver: Receiver) -> None:
    run_id = submit_with_callback(client, f"{receiver.server.url}/hook")
    client.delete(f"/api/runs/{run_id}")  # ends ABORTED at once: the callback is owed
    got = wait_for(lambda: receiver.received)
    assert got[0]["valid"] and got[0]["body"]["id"] == run_id
    assert got[0]["body"]["status"] == "ABORTED"
    view = wait_for(
        lambda: (
            (d := client.get(f"/api/runs/{run_id}/callbacks").json()["items"])
            and d[0]["state"] == "delivered"
            and d
        )
    )
    assert view[0]["attempts"] == 1 and view[0]["lastStatus"] == 200
    audit = client.get(f"/api/runs/{run_id}/audit").json()["items"]
    assert audit[0]["actor"] == "ascob" and audit[0]["action"] == "callback_delivered"


@pytest.mark.integration  # a receiver on loopback
def test_a_receiver_that_is_down_for_a_while_gets_it_later(
    client: TestClient, receiver: Receiver
) -> None:
    receiver.answers = [503, 500, 302]
    run_id = submit_with_callback(client, f"{receiver.server.url}/hook")
    client.delete(f"/api/runs/{run_id}")
    wait_for(lambda: len(receiver.received) >= 2)
    middle = client.get(f"/api/runs/{run_id}/callbacks").json()["items"][0]
    assert middle["state"] == "pending" and middle["lastError"].startswith("HTTP 5")
    view = wait_for(
        lambda: (
            (d := client.get(f"/api/runs/{run_id}/callbacks").json()["items"])
            and d[0]["state"] == "delivered"
            and d
        ),
        within=30,
    )
    assert view[0]["attempts"] == 4  # 503, 500, a redirect (not followed), then 200
    assert len(receiver.received) == 4
    # each attempt is listed, as webhook providers list deliveries: when, status or error
    log = view[0]["attemptLog"]
    assert [a["status"] for a in log] == [503, 500, 302, 200]
    assert [a["error"] for a in log] == [
        "HTTP 503",
        "HTTP 500",
        "HTTP 302: redirects are not followed",
        None,
    ]
    times = [a["at"] for a in log]
    assert times == sorted(times) and len(set(times)) == 4


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://127.0.0.1/hook", "http"),
        ("http://10.1.2.3/hook", "ALLOWLIST"),
        ("http://user:pw@127.0.0.1/hook", "credentials"),
        ("http://evil.example.org/hook", "resolve"),  # no DNS here; elsewhere: not allowed
    ],
)
def test_destinations_are_checked_at_submission(client: TestClient, url: str, why: str) -> None:
    r = client.post("/api/runs", json={"jobSpec": {"labels": DUMMY, "callbackUrl": url}})
    assert r.status_code == 400 and why in r.json()["error"]


async def test_metadata_addresses_are_never_called(services: Services) -> None:
    services.settings.callback_secret = SECRET
    services.settings.callback_allowlist = ["0.0.0.0/0", "::/0", "metadata.internal"]
    with TestClient(create_app(services), headers={"X-Api-Token": ROOT}) as client:
        for url in ("http://169.254.169.254/latest/meta-data", "http://[fe80::1]/x"):
            r = client.post("/api/runs", json={"jobSpec": {"labels": DUMMY, "callbackUrl": url}})
            assert r.status_code == 400 and "metadata" in r.json()["error"], url
    # a name the allowlist accepts, resolving to a metadata address at delivery time
    allow = Allowlist.parse(["metadata.internal"])
    with patch("ascob_api.callbacks._resolve", return_value=["169.254.169.254"]):
        why = await destination_allowed(allow, "http://metadata.internal/latest")
    assert why is not None and "metadata" in why


def test_callbacks_need_a_signing_secret(services: Services, api: TestClient) -> None:
    r = api.post(
        "/api/runs", json={"jobSpec": {"labels": DUMMY, "callbackUrl": "http://127.0.0.1/h"}}
    )
    assert r.status_code == 400 and "ASCOB_CALLBACK_SECRET" in r.json()["error"]


def test_a_database_from_before_attempt_records_gains_them(tmp_path: Path) -> None:
    """An existing database (deliveries, no attempts table) is upgraded in place by the schema
    creation every process runs at start: its deliveries are listed, new attempts recorded."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    create_schema(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE callback_attempts")
        conn.execute(
            text(
                "INSERT INTO callback_deliveries (run_id, url, state, attempts, next_attempt_at,"
                " deadline, created_at) VALUES (7, 'http://127.0.0.1/h', 'pending', 0,"
                " '2026-01-01 00:00:00', '2099-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    create_schema(engine)
    repo = Repository(engine)
    (old,) = repo.callbacks_of(7)
    assert old.id is not None
    repo.callback_failed(old.id, 500, "HTTP 500", None)
    assert [(a.status, a.error) for a in repo.callback_attempts_of([old.id])[old.id]] == [
        (500, "HTTP 500")
    ]
    engine.dispose()
