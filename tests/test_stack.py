"""The scale-out picture of deploy/compose.yaml, without containers, on loopback.

PostgreSQL (ASCOB's repository and, in a second database, Prefect's), a Prefect server on it, a
3-member etcd cluster (Debian's etcd) for the locks, two ``ascob api`` and two ``ascob executor``
processes, each with its own ASCOB_HOME as each container has its own volume, all pointed at the
three etcd members through ``ASCOB_ETCD_URL``.

Jobs that name locks are submitted through both APIs while, mid-way, the etcd member that every
process talks to first is SIGKILLed, then one executor holding runs in flight is SIGKILLed. What
a user would notice is checked from the outside: every run ends SUCCEDED, runs sharing a lock
key never overlapped (their dummy jobs' start and end times, as tests/test_scale_out.py checks),
every job was submitted to the backend once, the dead executor's runs were finished by the other
one, and nothing is left in etcd or in ``GET /api/locks`` afterwards.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_server import EtcdCluster, etcd_binary
from tests.harness import Ascob, PrefectServer, Proc, wait_until
from tests.postgres_server import PostgresServer, require_bindir
from tests.test_scale_out import _SUBMITTED, FINAL, Cluster, spec

pytestmark = pytest.mark.system


EXECUTORS = ("stack-a", "stack-b")
IN_FLIGHT = ("WAITING_LOCKS", "PENDING_SUBMIT", "SUBMITTED", "RUNNING")
LOCK_PREFIX = "ascob/locks/"
# a dead executor's runs are taken over after this; its locks last the (default, 30 s) lease,
# longer, so the run that takes over re-takes them before anyone else can
EXECUTOR_TTL = "8"


@dataclass
class Stack:
    cluster: Cluster
    etcd: EtcdCluster


@pytest.fixture(scope="module")
def stack(workdir: Path) -> Iterator[Stack]:
    binary = etcd_binary()
    if binary is None:
        message = "no etcd binary (apt-get install etcd-server, or set ASCOB_TEST_ETCD)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    started: list[Any] = []
    try:
        etcd = EtcdCluster(workdir / "etcd", binary, size=3).start()
        started.append(etcd)
        postgres = PostgresServer(require_bindir()).start()
        started.append(postgres)
        # Prefect on PostgreSQL, as the prefect_server_pg fixture and deploy/compose.yaml do
        prefect = PrefectServer(workdir, database_url=postgres.create_database("prefect"))
        prefect.start()
        started.append(prefect)

        deployment = f"ascob-stack-{uuid.uuid4().hex[:8]}"
        common = {
            "ASCOB_DEPLOYMENT": deployment,
            "ASCOB_DATABASE_URL": postgres.url,
            "ASCOB_ETCD_URL": etcd.url,
            "ASCOB_EXECUTOR_TTL": EXECUTOR_TTL,
            "ASCOB_EXECUTOR_HEARTBEAT": "2",
        }

        def make(command: str, name: str, extra: dict[str, str]) -> Ascob:
            app = Ascob(workdir, prefect.api_url, command=command, env={**common, **extra})
            app.proc = Proc(app.proc.args, app.env, app.home / f"{name}.log")
            return app

        executors = [make("executor", e, {"ASCOB_EXECUTOR_ID": e}) for e in EXECUTORS]
        apis = [make("api", f"api-{i}", {}) for i in range(2)]
        procs = [*executors, *apis]
        started.extend(procs)
        with ThreadPoolExecutor(len(procs)) as pool:
            for done in [pool.submit(p.start) for p in procs]:
                done.result()
        yield Stack(Cluster(apis, executors, postgres, prefect, deployment), etcd)
    finally:
        for part in reversed(started):
            part.stop()


def etcd_lock_keys(etcd: EtcdCluster) -> list[str]:
    return etcd.keys(LOCK_PREFIX)


def test_stack_survives_an_etcd_member_and_an_executor(stack: Stack) -> None:
    cluster, etcd = stack.cluster, stack.etcd
    apis = cluster.apis
    marker = uuid.uuid4().hex[:6]
    keys = [f"stack-{marker}-{k}" for k in ("a", "b", "c")]
    locked: dict[int, list[str]] = {}
    n = 0

    def submit(count: int) -> None:
        nonlocal n
        for _ in range(count):
            n += 1
            names = [keys[n % 3]] if n % 4 else [keys[n % 3], keys[(n + 1) % 3]]
            run_id = apis[n % 2].submit(spec(n, names, duration="1.0"))
            locked[run_id] = names

    def statuses() -> dict[int, tuple[str, str | None]]:
        rows = cluster.rows(
            "select id, status, executor_id from runs where id = any(%s)", sorted(locked)
        )
        return {row[0]: (row[1], row[2]) for row in rows}

    # phase 1: both executors busy with lock-serialised runs
    submit(18)
    wait_until(
        lambda: sum(s == "SUCCEDED" for s, _ in statuses().values()) >= 3,
        180,
        "the first runs to end",
        interval=0.5,
    )

    # fault 1: the etcd member every process tries first dies; the cluster keeps its quorum
    etcd.members[0].kill()
    submit(12)

    # fault 2: an executor dies while it holds runs in flight. Not mid-dispatch: a dispatch cut
    # in half ends IN_DOUBT by design, which is not what this test is about. So the executor is
    # frozen (SIGSTOP) first, and SIGKILLed only if none of its runs is PENDING_SUBMIT then
    by_name = dict(zip(EXECUTORS, cluster.executors, strict=True))

    def frozen_victim() -> str | None:
        for name in EXECUTORS:
            by_name[name].proc.signal(signal.SIGSTOP)
            mine = [s for s, e in statuses().values() if e == name and s in IN_FLIGHT]
            if "RUNNING" in mine and "PENDING_SUBMIT" not in mine:
                return name
            by_name[name].proc.signal(signal.SIGCONT)
        time.sleep(0.2)
        return None

    victim = wait_until(frozen_victim, 120, "an executor with runs in flight", interval=0)
    by_name[victim].kill()
    survivor = next(e for e in EXECUTORS if e != victim)
    orphans = [rid for rid, (s, e) in statuses().items() if e == victim and s in IN_FLIGHT]
    submit(12)

    # every run ends, SUCCEDED, whichever API is asked
    def pending() -> list[int]:
        api = apis[int(time.monotonic()) % 2]
        r = api.http.post("/api/search/runs", json={"maxResults": 1000})
        assert r.status_code == 200, r.text
        seen = {item["id"]: item["status"] for item in r.json()["items"]}
        return [rid for rid in locked if seen.get(rid) not in FINAL]

    try:
        wait_until(lambda: not pending(), 300, "every run to end", interval=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.logs()}\n{etcd.tail()}") from None
    infos = {rid: apis[rid % 2].run(rid) for rid in locked}
    failed = {rid: info["status"] for rid, info in infos.items() if info["status"] != "SUCCEDED"}
    assert not failed, (failed, cluster.logs())

    # the dead executor's runs were finished by the other one
    assert orphans, "the killed executor held no run"
    final = statuses()
    assert all(final[rid][1] == survivor for rid in orphans), {r: final[r] for r in orphans}

    # no lock key ever had two holders: runs sharing a key never overlapped
    for key in keys:
        spans = sorted(
            (
                datetime.fromisoformat(infos[rid]["submissionTime"]),
                datetime.fromisoformat(infos[rid]["endTime"]),
                rid,
            )
            for rid, names in locked.items()
            if key in names
        )
        for (_, end, first), (start, _, second) in pairwise(spans):
            assert end <= start, (key, first, second, spans)

    # each job reached the backend exactly once (also those of the killed executor)
    submissions: Counter[int] = Counter()
    for app in cluster.executors:
        for m in _SUBMITTED.finditer(app.proc.log.read_text(errors="replace")):
            if int(m.group(1)) in locked:
                submissions[int(m.group(1))] += 1
    assert all(submissions[rid] == 1 for rid in locked), {
        rid: submissions[rid] for rid in locked if submissions[rid] != 1
    }

    # nothing left behind: neither in etcd (the killed executor's leases expire too) ...
    try:
        wait_until(lambda: not etcd_lock_keys(etcd), 60, "the lock keys to leave etcd")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {etcd_lock_keys(etcd)}") from None
    # ... nor in what the API shows: an API that has not talked to etcd since the member died
    # answers at once (a refused connection is tried on the next member within the call)
    first_answers = []
    for api in apis:
        r = api.http.get("/api/locks")
        first_answers.append(r.status_code)
        assert r.status_code == 200, r.text
        assert not [item for item in r.json()["items"] if item["key"] in keys], r.json()

    print(
        f"\nstack: {len(locked)} runs through 2 APIs, all SUCCEDED; faults: etcd member "
        f"{etcd.members[0].name} and executor {victim} SIGKILLed; {len(orphans)} runs taken "
        f"over by {survivor}; first GET /api/locks per API after the etcd fault: {first_answers}"
    )
