"""Live events: ids, resuming after Last-Event-ID, and tickets for a browser's EventSource."""

from __future__ import annotations

import json
import logging
import time

from fastapi.testclient import TestClient

from ascob_api.routes.events import make_ticket
from ascob_api.service import Services
from ascob_flows import lifecycle
from ascob_flows.runtime import Runtime
from tests.unit.conftest import DUMMY, submit

log = logging.getLogger("test")
OUTPUT = "alpha\nbeta\ngamma\n"


def events(api: TestClient, run_id: int, **kw: object) -> list[tuple[str, str, str]]:
    """(event, id, data) of the whole stream."""
    out: list[tuple[str, str, str]] = []
    with api.stream("GET", f"/api/runs/{run_id}/events", **kw) as r:  # type: ignore[arg-type]
        assert r.status_code == 200, r.read()
        event = ident = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("data: "):
                out.append((event, ident, line[6:]))
    return out


async def finished_run(services: Services, api: TestClient) -> int:
    run_id = submit(api, description="sse", labels={**DUMMY, "output": OUTPUT})
    rt = Runtime(repo=services.repo, backends=services.backends, locks=services.locks)
    await lifecycle.acquire(rt, run_id, log)
    await lifecycle.dispatch(rt, run_id, {}, log)
    deadline = time.monotonic() + 10
    while await lifecycle.follow(rt, run_id, log) != "SUCCEDED":
        assert time.monotonic() < deadline
    return run_id


async def test_events_carry_ids_and_resume_after_last_event_id(
    services: Services, api: TestClient
) -> None:
    run_id = await finished_run(services, api)
    whole = events(api, run_id, params={"interval": 0.2})
    lines = [(i, d) for e, i, d in whole if e == "output"]
    assert [d for _, d in lines] == ["alpha", "beta", "gamma"]
    assert [i for i, _ in lines] == ["6", "11", "17"]  # byte offsets after each line
    assert whole[-1][0] == "end" and json.loads(whole[-1][2])["status"] == "SUCCEDED"
    resumed = events(api, run_id, params={"interval": 0.2}, headers={"Last-Event-ID": "6"})
    assert [d for e, _, d in resumed if e == "output"] == ["beta", "gamma"]
    assert resumed[0][0] == "status"  # the current status comes first


async def test_every_event_has_its_own_id_and_any_of_them_resumes_exactly(
    services: Services, api: TestClient
) -> None:
    run_id = await finished_run(services, api)
    whole = events(api, run_id, params={"interval": 0.2})
    ids = [i for _, i, _ in whole]
    assert len(ids) == len(set(ids)), whole  # the end does not repeat the last line's id
    end_id = whole[-1][1]
    last_line_id = [i for e, i, _ in whole if e == "output"][-1]
    assert whole[-1][0] == "end" and end_id != last_line_id
    # resuming after a status event or the end: from the offset they were sent at
    first_status = next(i for e, i, _ in whole if e == "status")
    again = events(api, run_id, params={"interval": 0.2}, headers={"Last-Event-ID": first_status})
    assert [d for e, _, d in again if e == "output"] == ["alpha", "beta", "gamma"]
    after_end = events(api, run_id, params={"interval": 0.2}, headers={"Last-Event-ID": end_id})
    assert [e for e, _, _ in after_end if e == "output"] == []
    assert after_end[-1][0] == "end"
    bad = api.get(f"/api/runs/{run_id}/events", headers={"Last-Event-ID": "6.x"})
    assert bad.status_code == 400


async def test_a_ticket_opens_one_runs_events_for_a_minute(
    services: Services, api: TestClient
) -> None:
    run_id = await finished_run(services, api)
    other = submit(api, description="other")
    ticket = api.post(f"/api/runs/{run_id}/events/ticket").json()
    assert ticket["expiresIn"] == 60
    anonymous = TestClient(api.app)
    got = events(anonymous, run_id, params={"ticket": ticket["ticket"], "interval": 0.2})
    assert [d for e, _, d in got if e == "output"] == ["alpha", "beta", "gamma"]
    wrong_run = anonymous.get(f"/api/runs/{other}/events", params={"ticket": ticket["ticket"]})
    assert wrong_run.status_code == 401
    stale = make_ticket(services, run_id, now=time.time() - 120)
    expired = anonymous.get(f"/api/runs/{run_id}/events", params={"ticket": stale})
    assert expired.status_code == 401 and "expired" in expired.json()["error"]
    assert anonymous.get(f"/api/runs/{run_id}").status_code == 401  # read-only, events only
    assert anonymous.get(f"/api/runs/{run_id}/events").status_code == 401
