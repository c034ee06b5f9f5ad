"""Scale-out: two ``ascob api`` and two ``ascob executor`` processes of one installation.

They share one PostgreSQL repository (started here), one Prefect server (the session's) and the
SQL lock store in that database; nothing else. Runs are submitted alternately through the two
APIs; the test shows that every run is executed exactly once (one flow run, one dispatch), none
is lost, locks stay exclusive across executors, a stop through the API that did not take the
run works, and both APIs answer the same thing about every run.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.harness import WEBHOOK_TOKEN, Ascob, PrefectServer, Proc, wait_until
from tests.postgres_server import PostgresServer, require_bindir

pytestmark = pytest.mark.system


DUMMY = {"_execution_backend_id": "dummyBackend"}
EXECUTORS = ("exec-a", "exec-b")
FINAL = {"SUCCEDED", "FAILED", "ABORTED", "IN_DOUBT"}
# the flow's log line after a successful backend submission (once per line: not the message=)
_BEGUN = re.compile(r"\] Beginning flow run 'ascob-(\d+) ")
_SUBMITTED = re.compile(r"\] run (\d+): submitted to dummyBackend as \{'dummyJobId': '(\w+)'")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(require_bindir())
    try:
        server.start()
        # not UTC on purpose: ASCOB must store and show UTC whatever the server's time zone
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {server.database} SET timezone TO 'Asia/Kolkata'")
        yield server
    finally:
        server.stop()


@dataclass
class Cluster:
    apis: list[Ascob]
    executors: list[Ascob]
    postgres: PostgresServer
    prefect: PrefectServer
    deployment: str

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.postgres.url) as conn:
            return conn.execute(sql, args).fetchall()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.proc.log.name} ---\n{p.proc.tail(40)}" for p in [*self.apis, *self.executors]
        )


@pytest.fixture(scope="module")
def cluster(
    workdir: Path, prefect_server: PrefectServer, postgres: PostgresServer
) -> Iterator[Cluster]:
    """One installation: shared deployment name, database and ASCOB_HOME (the dummy backend
    records its stops there), one log file and executor id per process."""
    home = workdir / f"scale-{uuid.uuid4().hex[:8]}"
    deployment = f"ascob-test-{home.name}"
    common = {"ASCOB_DEPLOYMENT": deployment, "ASCOB_DATABASE_URL": postgres.url}

    def make(command: str, name: str, extra: dict[str, str]) -> Ascob:
        app = Ascob(
            workdir, prefect_server.api_url, command=command, env={**common, **extra}, home=home
        )
        app.proc = Proc(app.proc.args, app.env, home / f"{name}.log")
        return app

    executors = [make("executor", e, {"ASCOB_EXECUTOR_ID": e}) for e in EXECUTORS]
    apis = [make("api", f"api-{i}", {}) for i in range(2)]
    procs = [*executors, *apis]
    try:
        # all four at once: they race to create the schema and the deployment
        with ThreadPoolExecutor(len(procs)) as pool:
            for started in [pool.submit(p.start) for p in procs]:
                started.result()
        yield Cluster(apis, executors, postgres, prefect_server, deployment)
    finally:
        for p in procs:
            p.stop()


def spec(n: int, locks: list[str] | None = None, **labels: str) -> dict[str, Any]:
    return {
        "description": f"dummy scale-out {n}",
        "submitter": f"user{n % 3}",
        "labels": {**DUMMY, **labels},
        "locks": [{"key": k} for k in locks or []],
    }


def flow_runs(cluster: Cluster) -> list[dict[str, Any]]:
    base = cluster.prefect.api_url
    with httpx.Client(base_url=base, timeout=30) as client:
        r = client.get(f"/deployments/name/ascob-job/{cluster.deployment}")
        r.raise_for_status()
        deployment_id = r.json()["id"]
        out: list[dict[str, Any]] = []
        while True:
            r = client.post(
                "/flow_runs/filter",
                json={
                    "deployments": {"id": {"any_": [deployment_id]}},
                    "limit": 200,
                    "offset": len(out),
                },
            )
            r.raise_for_status()
            page = r.json()
            out += page
            if len(page) < 200:
                return out


def test_two_apis_two_executors_on_postgres(cluster: Cluster) -> None:
    started = time.monotonic()
    apis = cluster.apis
    marker = uuid.uuid4().hex[:6]
    lock_keys = [f"scale-{marker}-{k}" for k in ("x", "y")]
    expected: dict[int, str] = {}
    via: dict[int, int] = {}
    locked: dict[str, list[int]] = {k: [] for k in lock_keys}
    running: list[int] = []

    def submit(n: int, body: dict[str, Any], final: str) -> int:
        api = n % 2
        run_id = apis[api].submit(body)
        expected[run_id], via[run_id] = final, api
        return run_id

    n = 0
    for i in range(60):
        n += 1
        if i in (5, 35):  # RUNNING until stopped through the other API
            running.append(submit(n, spec(n, status="RUNNING"), "ABORTED"))
        elif i % 5 == 1:  # serialised by a lock shared by both executors
            key = lock_keys[i % 2]
            locked[key].append(submit(n, spec(n, [key], duration="0.4"), "SUCCEDED"))
        elif i % 7 == 3:
            submit(n, spec(n, status="FAILED", duration="0.5"), "FAILED")
        elif i == 20:
            submit(n, spec(n, fail="true"), "FAILED")  # refused by the backend at dispatch
        elif i % 3 == 0:
            submit(n, spec(n, duration="1.5"), "SUCCEDED")
        else:
            submit(n, spec(n), "SUCCEDED")
    submitted = time.monotonic()

    # a RUNNING run reads RUNNING through both APIs, and the API that did not take it stops it
    for run_id in running:
        other = apis[1 - via[run_id]]
        apis[via[run_id]].wait_status(run_id, "RUNNING", timeout=180)
        assert other.run(run_id)["status"] == "RUNNING"
        r = other.http.delete(f"/api/runs/{run_id}")
        assert r.status_code == 200, r.text

    # every run reaches its final status (polled through both APIs in turn)
    def pending() -> list[int]:
        api = apis[int(time.monotonic()) % 2]
        r = api.http.post("/api/search/runs", json={"maxResults": 1000})
        assert r.status_code == 200, r.text
        seen = {item["id"]: item["status"] for item in r.json()["items"]}
        return [rid for rid in expected if seen.get(rid) not in FINAL]

    try:
        # generous: on a quiet machine this takes well under a minute
        wait_until(lambda: not pending(), 300, "every run to end", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.logs()}") from None
    finished = time.monotonic()

    # ... the expected one, read identically through either API (one by one and by search)
    for run_id, final in expected.items():
        first, second = apis[0].run(run_id), apis[1].run(run_id)
        assert first == second, (first, second)
        assert first["status"] == final, (run_id, first, cluster.logs())
    searches = [
        api.http.post("/api/search/runs", json={"maxResults": 1000}).json()["items"] for api in apis
    ]
    assert searches[0] == searches[1]
    mine = [item for item in searches[0] if item["id"] in expected]
    assert len(mine) == len(expected)
    # times are UTC whatever the database's time zone (it is not UTC here)
    newest = max(datetime.fromisoformat(item["definedTime"]) for item in mine)
    utc_now = datetime.now(UTC).replace(tzinfo=None)
    assert abs((utc_now - newest).total_seconds()) < 600

    # none lost, executed once: the repository ...
    ids = sorted(expected)
    rows = {
        row[0]: row[1:]
        for row in cluster.rows(
            "select id, status, flow_run_id, executor_id, dispatch_started, "
            "identification_keys::text from runs where id = any(%s)",
            ids,
        )
    }
    assert sorted(rows) == ids
    assert all(r[1] for r in rows.values()), "a run without a flow run"
    by_executor = Counter(r[2] for r in rows.values())
    assert set(by_executor) == set(EXECUTORS), by_executor  # both executors took work
    # ... Prefect: exactly one flow run per run, the one the repository names, ended accordingly
    runs_by_name: dict[str, list[dict[str, Any]]] = {}
    for fr in flow_runs(cluster):
        runs_by_name.setdefault(fr["name"].split(" ")[0], []).append(fr)
    assert len(runs_by_name) == len(ids), sorted(runs_by_name)
    state_of = {"SUCCEDED": "COMPLETED", "FAILED": "FAILED", "ABORTED": "CANCELLED"}
    for run_id in ids:
        frs = runs_by_name.get(f"ascob-{run_id}", [])
        assert len(frs) == 1, (run_id, frs)
        assert frs[0]["id"] == rows[run_id][1]
        assert frs[0]["state_type"] == state_of[expected[run_id]], (run_id, frs[0]["state"])
    # ... and the backend: one submission per dispatched run, by the executor the row names
    logs = {name: e.proc.log for e, name in zip(cluster.executors, EXECUTORS, strict=True)}
    submissions: Counter[int] = Counter()
    submitted_by: dict[int, str] = {}
    for name, path in logs.items():
        for m in _SUBMITTED.finditer(path.read_text()):
            run_id = int(m.group(1))
            if run_id in expected:
                submissions[run_id] += 1
                submitted_by[run_id] = name
                assert m.group(2) in rows[run_id][4]  # the job the repository knows
    # ... and each flow run was started once, by one executor (not again by a stale claim)
    begun = Counter(
        int(m.group(1)) for path in logs.values() for m in _BEGUN.finditer(path.read_text())
    )
    assert all(begun[rid] == 1 for rid in ids), {r: n for r, n in begun.items() if n != 1}
    dispatched = [rid for rid in ids if "dummyJobId" in rows[rid][4]]
    refused = [rid for rid in ids if rows[rid][3] and "dummyJobId" not in rows[rid][4]]
    assert len(dispatched) == len(ids) - 1 and len(refused) == 1  # the fail=true run
    assert all(submissions[rid] == 1 for rid in dispatched), submissions
    assert not set(submissions) - set(dispatched)
    assert all(submitted_by[rid] == rows[rid][2] for rid in dispatched)

    # locks stayed exclusive across the two executors: same-key runs never overlapped
    for key, members in locked.items():
        spans = sorted(
            (
                datetime.fromisoformat(info["submissionTime"]),
                datetime.fromisoformat(info["endTime"]),
            )
            for info in (apis[0].run(rid) for rid in members)
        )
        for (_, end), (start, _) in pairwise(spans):
            assert end <= start, (key, spans)
    assert not cluster.rows("select key from lock_holds where key = any(%s)", lock_keys)

    print(
        f"\nscale-out: {len(ids)} runs, submitted in {submitted - started:.1f} s, all final "
        f"after {finished - started:.1f} s; by executor {dict(by_executor)}"
    )


def test_tokens_files_and_manual_start_work_across_apis(cluster: Cluster) -> None:
    """What one API replica records, the other one honours at once: nothing lives in memory."""
    a, b = cluster.apis
    name = f"scaler-{uuid.uuid4().hex[:6]}"
    r = a.http.post(
        f"/api/security/tokens/{name}",
        json={"permissions": ["job_run_read", "job_run_search"], "expirySeconds": 0},
    )
    assert r.status_code == 200, r.text
    secret = r.json()["secret"]
    search = {"X-Api-Token": secret}
    assert b.http.post("/api/search/runs", json={}, headers=search).status_code == 200
    assert b.http.delete(f"/api/security/tokens/{name}").status_code in (200, 204)
    assert a.http.post("/api/search/runs", json={}, headers=search).status_code in (401, 403)

    # a manual-start run: file uploaded through A, started through B, its job reads the file
    # through A and ends the run through B's webhook; the executor running it follows
    run_id = a.submit({**spec(0, status="RUNNING"), "manualStart": True})
    r = b.http.post(f"/api/runs/{run_id}/files/input.txt", content=b"shared bytes")
    assert r.status_code == 200, r.text
    time.sleep(1.5)  # no executor may start it before the start
    assert a.run(run_id)["status"] == "DEFINED"
    assert b.http.get(f"/api/runs/{run_id}/start").status_code == 200
    a.wait_status(run_id, "RUNNING", timeout=90)
    (webhook_id,) = cluster.rows("select webhook_id from runs where id = %s", run_id)[0]
    hook = {"X-Api-Token": WEBHOOK_TOKEN}
    r = a.http.get(f"/api/webhooks/runs/{webhook_id}/files/input.txt", headers=hook)
    assert r.status_code == 200 and r.content == b"shared bytes", r.text
    r = b.http.post(f"/api/webhooks/runs/{webhook_id}", json={"status": "SUCCEEDED"}, headers=hook)
    assert r.status_code == 200, r.text
    assert a.wait_status(run_id, "SUCCEDED", timeout=30) == b.run(run_id)
    (executor_id,) = cluster.rows("select executor_id from runs where id = %s", run_id)[0]
    assert executor_id in EXECUTORS
    # the flow run ends too (the executor saw the change made by another process)
    wait_until(
        lambda: any(
            fr["name"].startswith(f"ascob-{run_id} ") and fr["state_type"] == "COMPLETED"
            for fr in flow_runs(cluster)
        ),
        30,
        "the flow run to complete",
    )


def test_one_idempotency_key_through_two_apis_at_once_is_one_run(cluster: Cluster) -> None:
    """Portals retry through a load balancer: the same key and body, concurrently, through both
    API replicas, makes one run (the key is in the shared repository)."""
    key = f"idem-{uuid.uuid4().hex[:8]}"
    body = {"jobSpec": spec(7)}

    def post(i: int) -> httpx.Response:
        api = cluster.apis[i % 2]
        return api.http.post("/api/runs", json=body, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(16)))
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    run_ids = {r.json()["runId"] for r in answers}
    assert len(run_ids) == 1
    assert [r.headers["Idempotent-Replayed"] for r in answers].count("false") == 1
    (run_id,) = run_ids
    assert (
        cluster.rows(
            "select count(*) from runs where spec->>'description' = %s", "dummy scale-out 7"
        )[0][0]
        >= 1
    )
    other = cluster.apis[1].http.post(
        "/api/runs", json={"jobSpec": spec(8)}, headers={"Idempotency-Key": key}
    )
    assert other.status_code == 409 and f"run {run_id}" in other.json()["error"]
