"""The portal's contract through HTTP against a real ``ascob serve``: strict input, limits,
RunInfo's extra fields, idempotency, audit, live events resumed, and callbacks to a loopback
receiver that checks the signature, is down for a while, and outlives a restart of ASCOB."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.server import ServerThread, free_port
from tests.harness import Ascob, PrefectServer, wait_until

DUMMY = {"_execution_backend_id": "dummyBackend"}
SECRET = "e2e-callback-secret"


def test_strict_input_and_limits(ascob: Ascob) -> None:
    r = ascob.http.post("/api/search/runs", json={"submitter": "carol"})
    assert r.status_code == 400 and "submitterFilter" in r.json()["error"]
    r = ascob.http.post("/api/runs", content=b'{"jobSpec": {}}')
    assert r.status_code == 415
    huge = b'{"jobSpec": {"description": "' + b"x" * (3 * 1024 * 1024) + b'"}}'
    r = ascob.http.post("/api/runs", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert ascob.http.get(f"/api/runs/{2**63}").status_code == 400
    r = ascob.http.post("/api/security/tokens/abc%0A", json={"permissions": []})
    assert r.status_code == 400
    docs = ascob.http.get("/docs").text
    assert "https://" not in docs and "http://" not in docs


def test_run_info_extra_fields_and_audit(ascob: Ascob) -> None:
    run_id = ascob.submit(
        {
            "description": "extras",
            "submitter": "alice",
            "labels": {**DUMMY, "status": "FAILED", "duration": "0.2"},
            "parameters": {"P": "1"},
            "locks": [{"key": f"x-{uuid.uuid4().hex[:6]}"}],
        }
    )
    info = ascob.wait_status(run_id, "FAILED")
    assert info["backendId"] == "dummyBackend" and info["parameters"] == {"P": "1"}
    assert info["message"] and info["locks"] and info["manualStart"] is False
    audit = ascob.http.get(f"/api/runs/{run_id}/audit").json()["items"]
    assert [(a["actor"], a["action"]) for a in audit] == [("root", "submit")]


def test_idempotent_submission_under_concurrency(ascob: Ascob) -> None:
    key = uuid.uuid4().hex
    body = {"jobSpec": {"description": "idem", "labels": DUMMY}}
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: ascob.http.post("/api/runs", json=body, headers={"Idempotency-Key": key}),
                range(12),
            )
        )
    assert len({r.json()["runId"] for r in answers}) == 1
    assert sum(r.headers["Idempotent-Replayed"] == "false" for r in answers) == 1


def test_events_resume_after_last_event_id_and_tickets(ascob: Ascob) -> None:
    output = "one\ntwo\nthree\n"
    run_id = ascob.submit({"labels": {**DUMMY, "output": output, "duration": "0.5"}})
    ascob.wait_status(run_id, "SUCCEDED")

    def stream(**kw: Any) -> list[tuple[str, str, str]]:
        got: list[tuple[str, str, str]] = []
        event = ident = ""
        with httpx.stream("GET", f"{ascob.url}/api/runs/{run_id}/events", timeout=30, **kw) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("id: "):
                    ident = line[4:]
                elif line.startswith("data: "):
                    got.append((event, ident, line[6:]))
        return got

    token = {"X-Api-Token": "rootToken"}
    whole = stream(headers=token)
    lines = [(i, d) for e, i, d in whole if e == "output"]
    assert [d for _, d in lines][-3:] == ["one", "two", "three"]
    after_first = lines[-3][0]
    resumed = stream(headers={**token, "Last-Event-ID": after_first})
    assert [d for e, _, d in resumed if e == "output"] == ["two", "three"]
    ticket = ascob.http.post(f"/api/runs/{run_id}/events/ticket").json()["ticket"]
    anonymous = stream(params={"ticket": ticket})
    assert [d for e, _, d in anonymous if e == "output"][-1] == "three"


class Receiver:
    """A loopback callback receiver that checks the signature; may answer 503 for a while."""

    def __init__(self, port: int) -> None:
        self.received: list[dict[str, Any]] = []
        self.down = True
        self.lock = threading.Lock()
        self.port = port
        self.thread: ServerThread | None = None

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        stamp = request.headers["x-ascob-timestamp"]
        mac = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        ok = request.headers["x-ascob-signature"] == f"sha256={mac.hexdigest()}"
        with self.lock:
            self.received.append({"valid": ok, "body": json.loads(body), "down": self.down})
        return Response(status_code=503 if self.down else 204)

    def start(self) -> None:
        self.thread = ServerThread(Starlette(routes=[Route("/cb", self.hook, methods=["POST"])]))
        self.thread.port, self.thread.url = self.port, f"http://127.0.0.1:{self.port}"
        self.thread._server.config.port = self.port
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(free_port())
    yield made
    made.stop()


def test_callbacks_signed_retried_and_durable_across_a_restart(
    workdir: Path, prefect_server: PrefectServer, receiver: Receiver
) -> None:
    env = {
        "ASCOB_CALLBACK_SECRET": SECRET,
        "ASCOB_CALLBACK_ALLOWLIST": "127.0.0.1/32",
    }
    app = Ascob(workdir, prefect_server.api_url, env=env).start()
    try:
        url = f"http://127.0.0.1:{receiver.port}/cb"
        run_id = app.submit({"labels": {**DUMMY, "duration": "0.3"}, "callbackUrl": url})
        app.wait_status(run_id, "SUCCEDED")
        # nobody listens yet: attempts fail and are recorded
        wait_until(
            lambda: (
                (c := app.http.get(f"/api/runs/{run_id}/callbacks").json()["items"])
                and c[0]["attempts"] >= 1
                and c[0]["lastError"]
            ),
            30,
            "a failed attempt",
        )
        app.kill()  # ASCOB dies between attempts
        receiver.start()  # answers 503 first (down for a while)
        app.restart()
        wait_until(lambda: receiver.received, 60, "an attempt after the restart")
        receiver.down = False
        final = wait_until(
            lambda: (
                (c := app.http.get(f"/api/runs/{run_id}/callbacks").json()["items"])
                and c[0]["state"] == "delivered"
                and c[0]
            ),
            90,
            "the callback delivered",
        )
        assert final["lastStatus"] == 204 and final["attempts"] >= 3
        assert all(r["valid"] for r in receiver.received)
        delivered = [r for r in receiver.received if not r["down"]]
        assert len(delivered) == 1 and delivered[0]["body"]["status"] == "SUCCEDED"
        assert delivered[0]["body"]["id"] == run_id
    finally:
        app.stop()


def test_post_beside_get_for_start_resubmit_refresh(ascob: Ascob) -> None:
    run_id = ascob.submit({"labels": DUMMY, "manualStart": True})
    assert ascob.http.post(f"/api/runs/{run_id}/start").status_code == 200
    ascob.wait_status(run_id, "SUCCEDED")
    assert ascob.http.post(f"/api/runs/{run_id}/refresh").json()["status"] == "SUCCEDED"
    again = ascob.http.post(f"/api/runs/{run_id}/resubmit", params={"submitter": "bob"})
    assert again.status_code == 200 and ascob.run(again.json()["runId"])["parentId"] == run_id
