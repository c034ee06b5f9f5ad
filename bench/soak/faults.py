"""The fault schedule: seeded, so a soak can be replayed, and every kind comes up.

Kinds go round in a shuffled cycle (each kind once per cycle, the order drawn from the seed); one
fault at a time, ``interval`` seconds apart. A fault is injected, held for its kind's time, then
repaired; then a probe run (a dummy job without locks) is submitted and the time from the repair
until it ends ``SUCCEDED`` is that fault's recovery time.

Kinds:

- ``executor-kill``: SIGKILL an executor, start it again 5 s later;
- ``executor-pause``: SIGSTOP an executor for longer than the lock lease, then SIGCONT (it wakes
  up believing it holds runs and locks that others took over meanwhile);
- ``api-kill``: SIGKILL an API replica, start it again 3 s later;
- ``etcd-member-kill``: SIGKILL one etcd member (quorum kept), start it again 10 s later;
- ``etcd-majority-kill``: SIGKILL two of the three members (no quorum: no lock can be taken or
  released), start them again 10 s later;
- ``prefect-kill``: SIGKILL the Prefect server, start it again 5 s later;
- ``postgres-kill``: SIGKILL PostgreSQL (every process of it), start it again 5 s later;
- ``jenkins-outage`` / ``rundeck-outage``: the stand-in answers 503 to everything for 15 s;
- ``lost-triggers``: the next three triggers of each stand-in are carried out but answered too
  late (the client times out: the job started, ASCOB does not know it).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.soak.stack import Stack

KINDS = (
    "executor-kill",
    "executor-pause",
    "api-kill",
    "etcd-member-kill",
    "etcd-majority-kill",
    "prefect-kill",
    "postgres-kill",
    "jenkins-outage",
    "rundeck-outage",
    "lost-triggers",
)


@dataclass
class Injected:
    kind: str
    target: str
    at: float  # wall clock of the injection
    repaired_at: float = 0.0
    recovered_at: float | None = None  # the probe ended SUCCEDED
    error: str | None = None

    @property
    def recovery(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.repaired_at


@dataclass
class Schedule:
    stack: Stack
    rng: random.Random
    interval: float
    probe: Callable[[], str]  # submits a probe run and waits for its final status
    kinds: tuple[str, ...] = KINDS
    done: list[Injected] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    baseline: float | None = None  # a probe's time before any fault: what "recovered" compares to

    def run(self, warmup: float) -> None:
        """Inject faults until :meth:`stop`; meant for a thread of its own."""
        if self.stop_event.wait(warmup):
            return
        started = time.time()
        if self.probe() == "SUCCEDED":
            self.baseline = time.time() - started
        cycle: list[str] = []
        while not self.stop_event.is_set():
            if not cycle:
                cycle = list(self.kinds)
                self.rng.shuffle(cycle)
            kind = cycle.pop(0)
            fault = self.inject(kind)
            self.done.append(fault)
            print(
                f"soak: fault {len(self.done)} {fault.kind} ({fault.target}) at {fault.at:.3f}, "
                f"repaired at {fault.repaired_at:.3f}; "
                f"recovered in {fault.recovery if fault.recovery is not None else '-'} s"
                + (f"; error: {fault.error}" if fault.error else ""),
                flush=True,
            )
            if self.stop_event.wait(self.interval):
                return

    def stop(self) -> None:
        self.stop_event.set()

    def inject(self, kind: str) -> Injected:
        s, rng = self.stack, self.rng
        fault = Injected(kind, "", time.time())
        try:
            if kind == "executor-kill":
                app = rng.choice(s.executors)
                fault.target = app.env["ASCOB_EXECUTOR_ID"]
                s.kill_ascob(app)
                time.sleep(5)
                s.restart_ascob(app)
            elif kind == "executor-pause":
                app = rng.choice(s.executors)
                fault.target = app.env["ASCOB_EXECUTOR_ID"]
                s.pause(app)
                time.sleep(s.lease + 5)
                s.resume(app)
            elif kind == "api-kill":
                i = rng.randrange(len(s.apis))
                fault.target = f"api-{i}"
                s.kill_ascob(s.apis[i])
                time.sleep(3)
                s.restart_ascob(s.apis[i])
            elif kind in ("etcd-member-kill", "etcd-majority-kill"):
                assert s.etcd is not None
                count = 1 if kind == "etcd-member-kill" else 2
                members = rng.sample(s.etcd.members, count)
                fault.target = ",".join(m.name for m in members)
                s.kill_etcd(members)
                time.sleep(10)
                s.restart_etcd(members)
            elif kind == "prefect-kill":
                fault.target = "prefect"
                s.kill_prefect()
                time.sleep(5)
                s.restart_prefect()
            elif kind == "postgres-kill":
                fault.target = "postgres"
                s.kill_postgres()
                time.sleep(5)
                s.restart_postgres()
            elif kind in ("jenkins-outage", "rundeck-outage"):
                fake = s.jenkins if kind == "jenkins-outage" else s.rundeck
                fault.target = kind.split("-")[0]
                for method in ("GET", "POST"):
                    fake.faults.add(method, ".", "503", times=10**9)
                time.sleep(15)
                fake.faults.clear()
            elif kind == "lost-triggers":
                fault.target = "jenkins,rundeck"
                s.jenkins.faults.add("POST", r"/buildWithParameters$", "hang", times=3, seconds=6)
                s.rundeck.faults.add("POST", r"/job/[^/]+/run$", "hang", times=3, seconds=6)
                time.sleep(20)
                s.jenkins.faults.clear()
                s.rundeck.faults.clear()
            else:
                raise ValueError(f"unknown fault kind {kind}")
        except Exception as exc:
            fault.error = repr(exc)[:300]
        fault.repaired_at = time.time()
        try:
            if self.probe() == "SUCCEDED":
                fault.recovered_at = time.time()
        except Exception as exc:
            fault.error = (fault.error or "") + f" probe: {exc!r}"[:300]
        return fault
