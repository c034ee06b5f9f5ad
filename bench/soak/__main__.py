"""``python -m bench.soak --runs N --seed S``: the soak (issue 16); docs/reliability.md.

Starts the topology (bench/soak/stack.py), submits ``--runs`` runs at ``--rate`` per second
(bench/soak/workload.py) while faults are injected every ``--fault-interval`` seconds
(bench/soak/faults.py), waits until every run ended, then checks what happened from the backends'
records (bench/soak/check.py). The last line is for scripts:

    soak: N runs, F faults, L lost, D duplicated, V lock violations, I in doubt

and the exit status is 1 when L, D or V is not 0 (2 when another check failed: a status that
does not match its backend or its Prefect flow run, locks left behind).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.soak.check import Findings, check
from bench.soak.faults import KINDS, Injected, Schedule
from bench.soak.stack import Stack
from bench.soak.workload import FINAL, Driver, Item, draw


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2000, help="runs the portals submit (2000)")
    p.add_argument("--seed", type=int, default=1, help="seeds the workload and the faults (1)")
    p.add_argument("--rate", type=float, default=1.5, help="submissions per second (1.5)")
    p.add_argument("--keys", type=int, default=8, help="size of the lock key space (8)")
    p.add_argument("--fault-interval", type=float, default=30.0, help="seconds between faults (30)")
    p.add_argument("--no-faults", action="store_true", help="the same workload, no fault")
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="the fault kinds, comma-separated (all of them)",
    )
    p.add_argument("--lease", type=float, default=15.0, help="ASCOB_LOCK_LEASE_SECONDS (15)")
    p.add_argument("--drain", type=float, default=1200.0, help="seconds to wait for the end")
    p.add_argument("--workdir", type=Path, default=None, help="logs go here (a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    return p.parse_args()


def drain(stack: Stack, driver: Driver, timeout: float) -> list[int]:
    """Wait until every tracked run is final; the ones that are not, at the timeout."""
    deadline = time.monotonic() + timeout
    pending: list[int] = sorted(driver.tracked)
    while pending and time.monotonic() < deadline:
        try:
            rows = stack.rows("select id, status from runs where id = any(%s)", pending)
            pending = sorted(rid for rid, status in rows if status not in FINAL)
        except Exception as exc:  # PostgreSQL may be restarting
            print(f"soak: drain: {exc!r}", flush=True)
        if pending:
            time.sleep(2)
    return pending


def throughput(findings: Findings, faults: list[Injected]) -> dict[str, float]:
    """Runs ended per minute while a fault (injection to recovery) was on, and while none was."""
    ends = sorted(
        datetime.fromisoformat(i["endTime"]).timestamp()
        for i in findings.infos.values()
        if i.get("endTime")
    )
    if len(ends) < 2:
        return {}
    windows = [(f.at, f.recovered_at or f.repaired_at) for f in faults]
    t0, t1 = ends[0], ends[-1]
    faulty = sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in windows)
    quiet = (t1 - t0) - faulty
    in_fault = sum(any(a <= e <= b for a, b in windows) for e in ends)
    return {
        "runs_per_min_without_faults": 60 * (len(ends) - in_fault) / quiet if quiet > 0 else 0.0,
        "runs_per_min_during_faults": 60 * in_fault / faulty if faulty > 0 else 0.0,
        "seconds_with_faults": faulty,
        "seconds_without_faults": quiet,
    }


def report(findings: Findings, faults: list[Injected], extra: dict[str, Any]) -> dict[str, Any]:
    recovery: dict[str, list[float]] = defaultdict(list)
    for f in faults:
        if f.recovery is not None:
            recovery[f.kind].append(f.recovery)
    return {
        "runs": findings.runs,
        "statuses": dict(findings.statuses),
        "faults": dict(Counter(f.kind for f in faults)),
        "fault_errors": [f"{f.kind}: {f.error}" for f in faults if f.error],
        "unrecovered": [f"{f.kind} ({f.target})" for f in faults if f.recovered_at is None],
        "probe_seconds_before_faults": extra.pop("baseline", None),
        "recovery_seconds": {
            k: {"median": statistics.median(v), "max": max(v), "n": len(v)}
            for k, v in sorted(recovery.items())
        },
        "lost": findings.lost,
        "duplicated": findings.duplicated,
        "lock_violations": findings.violations,
        "overlaps_with_in_doubt_runs": findings.doubt_overlaps,
        "status_mismatches": findings.mismatches,
        "prefect_mismatches": findings.prefect_mismatches,
        "leftovers": findings.leftovers,
        "aborted_before_their_flow_run": findings.never_launched,
        "in_doubt": {str(k): v for k, v in sorted(findings.in_doubt.items())},
        "throughput": throughput(findings, faults),
        "fault_log": [
            {
                "kind": f.kind,
                "target": f.target,
                "at": f.at,
                "repaired_at": f.repaired_at,
                "recovered_at": f.recovered_at,
            }
            for f in faults
        ],
        **extra,
    }


def show(rep: dict[str, Any]) -> None:
    def listing(name: str, limit: int = 20) -> None:
        items = rep[name]
        if items:
            print(f"{name} ({len(items)}):")
            for line in items[:limit]:
                print(f"  {line}")
            if len(items) > limit:
                print(f"  ... {len(items) - limit} more")

    print(f"statuses: {rep['statuses']}")
    print(f"faults: {rep['faults']}")
    if rep["probe_seconds_before_faults"] is not None:
        print(f"  a probe run took {rep['probe_seconds_before_faults']:.1f} s before any fault")
    for kind, rec in rep["recovery_seconds"].items():
        print(f"  {kind}: recovered in {rec['median']:.1f} s median, {rec['max']:.1f} s max")
    for name in (
        "fault_errors",
        "unrecovered",
        "lost",
        "duplicated",
        "lock_violations",
        "overlaps_with_in_doubt_runs",
        "status_mismatches",
        "prefect_mismatches",
        "leftovers",
        "driver_notes",
    ):
        listing(name)
    if rep["in_doubt"]:
        print(f"in doubt ({len(rep['in_doubt'])}):")
        for rid, why in list(rep["in_doubt"].items())[:30]:
            print(f"  run {rid}: {why}")
    for k, v in rep["throughput"].items():
        print(f"{k}: {v:.1f}")
    print(f"wall time: {rep['wall_seconds']:.0f} s; driver retried {rep['calls_retried']} calls")


def main() -> int:
    args = parse()
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        print(f"soak: unknown fault kinds {unknown}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ascob-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"soak: seed {args.seed}, {args.runs} runs at {args.rate}/s, logs in {work}", flush=True)
    started = time.monotonic()
    stack = Stack(work, lease=args.lease)
    try:
        stack.start()
        print(f"soak: stack up in {time.monotonic() - started:.0f} s", flush=True)
        t0 = time.monotonic()
        driver = Driver(stack, args.seed)
        probes = iter(range(10**6, 10**7))

        def probe() -> str:
            item = Item(next(probes), "dummy", "short", [], probe=True)
            run = driver.submit(item)
            return driver.wait_for(run.run_id, item.n % len(stack.apis), FINAL, 600)

        schedule = Schedule(stack, random.Random(args.seed), args.fault_interval, probe, kinds)
        faults_thread = threading.Thread(target=schedule.run, args=(20.0,), daemon=True)
        if not args.no_faults:
            faults_thread.start()
        rng = random.Random(args.seed)
        with ThreadPoolExecutor(96) as pool:
            for n in range(args.runs):
                pool.submit(driver.play, draw(rng, n, args.keys))
                next_at = t0 + (n + 1) / args.rate
                time.sleep(max(0.0, next_at - time.monotonic()))
                if n % 100 == 99:
                    print(f"soak: {n + 1} submitted, {len(schedule.done)} faults", flush=True)
            # every fault kind at least once, even in a short soak
            while not args.no_faults and len({f.kind for f in schedule.done}) < len(kinds):
                time.sleep(1)
            schedule.stop()
        faults_thread.join() if faults_thread.is_alive() else None
        pending = drain(stack, driver, args.drain)
        if pending:
            print(f"soak: {len(pending)} runs not final after the drain: {pending[:20]}")
        findings = check(stack, driver, args.lease)
        rep = report(
            findings,
            schedule.done,
            {
                "seed": args.seed,
                "wall_seconds": time.monotonic() - t0,
                "calls_retried": driver.calls_retried,
                "baseline": schedule.baseline,
                "driver_notes": [
                    f"run {t.run_id}: {note}" for t in driver.tracked.values() for note in t.notes
                ],
            },
        )
        show(rep)
        involved = findings.involved()
        if involved:
            print(f"evidence: what the executors logged about runs {sorted(involved)[:12]}")
            for line in stack.run_lines(set(sorted(involved)[:12])):
                print(f"  {line}")
        if args.out:
            args.out.write_text(json.dumps(rep, indent=1))
        lost, dup, viol = len(findings.lost), len(findings.duplicated), len(findings.violations)
        print(
            f"soak: {findings.runs} runs, {len(schedule.done)} faults, {lost} lost, "
            f"{dup} duplicated, {viol} lock violations, {len(findings.in_doubt)} in doubt",
            flush=True,
        )
        if lost or dup or viol:
            return 1
        if findings.mismatches or findings.prefect_mismatches or findings.leftovers:
            return 2
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
