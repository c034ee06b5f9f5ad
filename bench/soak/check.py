"""The checker: what happened, from the backends' own records, against what ASCOB says.

Evidence (independent of ASCOB's repository):

- the Jenkins stand-in's triggers and builds (each carries the run id in its ``RUN`` parameter and
  the fencing token in ``FENCE``; a build spans from its trigger to its last line or its stop);
- the Rundeck stand-in's executions (same options; created to ended or aborted);
- the dummy backend's world: every job it started (run id, start, duration) and every stop.

ASCOB's side is read through both APIs (``GET /api/runs/{id}``, ``GET /api/locks``), the Prefect
API (flow run states) and etcd (keys left under the lock prefix).

Findings:

- **lost**: a run the driver created (it got a ``runId``) that is not final, not readable through
  every API, or read differently by two APIs; an item whose submission never got an answer;
- **duplicated**: a run with more than one job at its backend (a trigger sent twice), or one
  portal request (one Idempotency-Key) that became two runs;
- **lock violations**: two jobs of two runs sharing a lock key that overlapped in time, or whose
  fencing tokens do not grow in the order the jobs started. A job whose run ended ``IN_DOUBT``
  is counted apart (ASCOB does not know that job exists, so it cannot hold a lock for it);
- **mismatches**: a run whose final status is not what its backend says of its job, or whose
  Prefect flow run did not end in the matching state;
- **leftovers**: lock keys left in etcd or listed by ``GET /api/locks`` once everything ended.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sqlite3
import time
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.soak.stack import Stack
from bench.soak.workload import FINAL, Driver

PREFECT_STATE = {
    "SUCCEDED": "COMPLETED",
    "FAILED": "FAILED",
    "ABORTED": "CANCELLED",
    "IN_DOUBT": "FAILED",
}


@dataclass
class Job:
    """One job a backend started, as the backend saw it."""

    backend: str
    ref: str
    run_id: int
    fence: int | None
    start: float
    end: float  # math.inf while it still runs
    status: str  # what ASCOB's final status should be: SUCCEDED, FAILED, ABORTED, or RUNNING


@dataclass
class Findings:
    runs: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    doubt_overlaps: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    prefect_mismatches: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    in_doubt: dict[int, str] = field(default_factory=dict)
    never_launched: list[int] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    infos: dict[int, dict[str, Any]] = field(default_factory=dict)

    def involved(self) -> set[int]:
        """The runs named by a lost, duplicated or violation finding."""
        text = " ".join([*self.lost, *self.duplicated, *self.violations])
        return {int(n) for n in re.findall(r"\brun (\d+)", text)}


def _fence(params: dict[str, str]) -> int | None:
    try:
        return int(params.get("FENCE", ""))
    except ValueError:
        return None


def _run_of(params: dict[str, str]) -> int | None:
    try:
        return int(params.get("RUN", ""))
    except ValueError:
        return None


def backend_jobs(stack: Stack) -> tuple[list[Job], Counter[int]]:
    """Every job the backends started, and how many times each run was sent to its backend."""
    now = time.time()
    jobs: list[Job] = []
    sent: Counter[int] = Counter()
    jenkins = stack.jenkins
    with jenkins._lock:
        for trigger in jenkins.triggers:
            run = _run_of(trigger.params)
            if run is not None and not trigger.merged:
                sent[run] += 1
        for path, builds in jenkins.builds.items():
            for build in builds:
                run = _run_of(build.params)
                if run is None:
                    continue
                item = jenkins.queue.get(build.queue_id)
                start = item.created if item is not None else build.started
                lines = len(build._all_lines())
                natural = build.started + (lines - 1) * build.job.line_interval
                building, result = build.state(now)
                if build.stopped_at is not None and build.stopped_at < natural:
                    end = build.stopped_at
                else:
                    end = math.inf if building else natural
                status = {"SUCCESS": "SUCCEDED", "FAILURE": "FAILED", "ABORTED": "ABORTED"}.get(
                    result or "", "RUNNING"
                )
                jobs.append(
                    Job(
                        "jenkins",
                        f"{path}#{build.number}",
                        run,
                        _fence(build.params),
                        start,
                        end,
                        status,
                    )
                )
        for item in jenkins.queue.values():  # triggered, then cancelled before it was built
            run = _run_of(item.params)
            if run is not None and item.build is None and item.cancelled:
                at = item.left_at or item.created
                jobs.append(
                    Job("jenkins", f"item {item.id}", run, _fence(item.params), item.created, at,
                        "ABORTED")
                )  # fmt: skip
    rundeck = stack.rundeck
    with rundeck._lock:
        for execution in rundeck.executions.values():
            run = _run_of(execution.options)
            if run is None or execution.retried is not None:
                continue
            sent[run] += 1
            state, _, ended = execution.state(now)
            status = {
                "succeeded": "SUCCEDED",
                "failed": "FAILED",
                "timedout": "FAILED",
                "aborted": "ABORTED",
            }.get(state, "RUNNING")
            jobs.append(
                Job(
                    "rundeck",
                    f"execution {execution.id}",
                    run,
                    _fence(execution.options),
                    execution.created,
                    math.inf if ended is None else ended,
                    status,
                )
            )
    world = stack.dummy_dir / "dummy.sqlite"
    if world.exists():
        with closing(sqlite3.connect(world, timeout=30)) as db:
            stops = dict(db.execute("select job_id, at from stopped").fetchall())
            rows = db.execute(
                "select job_id, run_id, started_at, duration, status, parameters from jobs"
            ).fetchall()
        for job_id, run, started, duration, final, params in rows:
            sent[run] += 1
            natural = started + duration
            stopped = stops.get(job_id)
            if stopped is not None and (final == "RUNNING" or stopped < natural):
                end, status = stopped, "ABORTED"
            elif final == "RUNNING" or natural > now:
                end, status = math.inf, "RUNNING"
            else:
                end = natural
                status = "SUCCEDED" if final in ("SUCCEEDED", "SUCCEDED") else final
            jobs.append(
                Job("dummy", job_id[:8], run, _fence(json.loads(params)), started, end, status)
            )
    return jobs, sent


def read_runs(stack: Stack, run_ids: list[int], findings: Findings) -> None:
    """Every run through every API: final, readable, the same everywhere."""
    clients = [stack.api_client(i) for i in range(len(stack.apis))]
    try:
        for run_id in run_ids:
            seen = []
            for i, client in enumerate(clients):
                try:
                    r = client.get(f"/api/runs/{run_id}")
                except httpx.HTTPError as exc:
                    findings.lost.append(f"run {run_id}: api-{i} did not answer ({exc!r})")
                    continue
                if r.status_code != 200:
                    findings.lost.append(f"run {run_id}: api-{i} answered {r.status_code}")
                    continue
                seen.append(r.json())
            if not seen:
                continue
            info = seen[0]
            findings.infos[run_id] = info
            if any(s["status"] != info["status"] for s in seen):
                said = [s["status"] for s in seen]
                findings.lost.append(f"run {run_id}: the APIs disagree {said}")
            if info["status"] not in FINAL:
                findings.lost.append(f"run {run_id}: still {info['status']}")
            findings.statuses[info["status"]] += 1
            if info["status"] == "IN_DOUBT":
                findings.in_doubt[run_id] = str(info.get("message"))
    finally:
        for client in clients:
            client.close()


def check_locks(jobs: list[Job], findings: Findings) -> None:
    by_key: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        info = findings.infos.get(job.run_id)
        for lock in (info or {}).get("locks") or []:
            by_key[lock if isinstance(lock, str) else lock["key"]].append(job)
    for key, held in by_key.items():
        held.sort(key=lambda j: (j.start, j.end))
        for i, first in enumerate(held):
            for second in held[i + 1 :]:
                if second.start >= first.end:
                    break
                if first.run_id == second.run_id:
                    continue  # one run sent twice: counted as duplicated
                doubt = {
                    findings.infos.get(r, {}).get("status") for r in (first.run_id, second.run_id)
                }
                text = (
                    f"{key}: run {first.run_id} ({first.backend} {first.ref} "
                    f"{first.start:.3f}-{first.end:.3f}) overlaps run {second.run_id} "
                    f"({second.backend} {second.ref} from {second.start:.3f})"
                )
                if "IN_DOUBT" in doubt:
                    findings.doubt_overlaps.append(text)
                else:
                    findings.violations.append(text)
        fenced = [(j, j.fence) for j in held if j.fence is not None]
        for (first, f1), (second, f2) in itertools.pairwise(fenced):
            if first.run_id != second.run_id and f2 <= f1:
                findings.violations.append(
                    f"{key}: run {second.run_id} started after run {first.run_id} with fencing "
                    f"token {f2} <= {f1}"
                )


def check_statuses(jobs: list[Job], findings: Findings) -> None:
    by_run: dict[int, list[Job]] = defaultdict(list)
    for job in jobs:
        by_run[job.run_id].append(job)
    for run_id, info in findings.infos.items():
        status = info["status"]
        mine = by_run.get(run_id, [])
        if status == "IN_DOUBT":
            continue  # the reason is reported; the backend may or may not have the job
        if not mine:
            if status == "SUCCEDED":
                findings.mismatches.append(f"run {run_id}: SUCCEDED without any job at its backend")
            continue
        said = mine[-1].status
        if said != status:
            findings.mismatches.append(
                f"run {run_id}: {status} but its {mine[-1].backend} job {mine[-1].ref} is {said}"
                f" ({info.get('message')})"
            )


def check_prefect(stack: Stack, findings: Findings) -> None:
    assert stack.prefect is not None
    rows = stack.rows("select id, flow_run_id from runs where id = any(%s)", sorted(findings.infos))
    flow_runs = {str(fr): rid for rid, fr in rows if fr}
    for rid in sorted(set(findings.infos) - set(flow_runs.values())):
        info = findings.infos[rid]
        if info["status"] == "ABORTED" and info.get("submissionTime") is None:
            findings.never_launched.append(rid)  # stopped before its flow run was created
        else:
            findings.prefect_mismatches.append(f"run {rid}: {info['status']}, no flow run")
    ids = sorted(flow_runs)

    def states() -> dict[str, str]:
        found: dict[str, str] = {}
        with httpx.Client(base_url=stack.prefect.api_url, timeout=60) as client:  # type: ignore[union-attr]
            for i in range(0, len(ids), 200):
                r = client.post(
                    "/flow_runs/filter",
                    json={"flow_runs": {"id": {"any_": ids[i : i + 200]}}, "limit": 200},
                )
                r.raise_for_status()
                for fr in r.json():
                    found[fr["id"]] = (fr.get("state") or {}).get("type", "?")
        return found

    def wrong(found: dict[str, str]) -> list[str]:
        return [
            f"run {rid}: {findings.infos[rid]['status']} but flow run {fr} is "
            f"{found.get(fr, 'missing')}"
            for fr, rid in flow_runs.items()
            if found.get(fr, "missing") != PREFECT_STATE.get(findings.infos[rid]["status"])
        ]

    # a flow run's final state is written just after the run's: give the last ones a minute
    deadline = time.monotonic() + 60
    bad = wrong(states())
    while bad and time.monotonic() < deadline:
        time.sleep(2)
        bad = wrong(states())
    findings.prefect_mismatches += bad


def check_leftovers(stack: Stack, findings: Findings, wait: float) -> None:
    deadline = time.monotonic() + wait
    keys = stack.etcd_lock_keys()
    while keys and time.monotonic() < deadline:
        time.sleep(1)
        keys = stack.etcd_lock_keys()
    findings.leftovers += [f"etcd: {k}" for k in keys]
    for i in range(len(stack.apis)):
        with stack.api_client(i) as client:
            items = client.get("/api/locks").json()["items"]
        findings.leftovers += [f"api-{i} /api/locks: {item}" for item in items]


def check(stack: Stack, driver: Driver, lease: float) -> Findings:
    findings = Findings()
    run_ids = sorted(driver.tracked)
    findings.runs = len(run_ids)
    findings.lost += [f"driver: {e}" for e in driver.errors]
    read_runs(stack, run_ids, findings)
    # one portal request, one run: runs by description (a resubmit names its parent)
    items: Counter[str] = Counter(
        info["description"] for info in findings.infos.values() if info.get("parentId") is None
    )
    findings.duplicated += [f"{d!r} became {n} runs" for d, n in items.items() if n > 1]
    jobs, sent = backend_jobs(stack)
    findings.duplicated += [
        f"run {rid} sent to its backend {n} times" for rid, n in sorted(sent.items()) if n > 1
    ]
    unknown = sorted({j.run_id for j in jobs} - set(findings.infos))
    findings.lost += [f"backend job for run {rid}, which the driver never saw" for rid in unknown]
    check_locks(jobs, findings)
    check_statuses(jobs, findings)
    check_prefect(stack, findings)
    check_leftovers(stack, findings, wait=lease + 15)
    return findings
