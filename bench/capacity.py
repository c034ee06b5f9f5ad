"""Issue "Prefect engine at scale" (a): one executor holding N live runs.

    .venv/bin/python -m bench.capacity --runs 500 1000 2000

For each N (cumulative: the runs stay live), submits dummy jobs that run until stopped
(``status=RUNNING``, ``ASCOB_POLL_INTERVAL=10``), waits until all are RUNNING, then samples the
``ascob serve`` process for 30 s: RSS, threads, CPU (as a fraction of one core), and the API's
GET latency meanwhile against its own idle baseline measured before any run existed.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.harness import Ascob, PrefectServer, wait_until


def proc_stats(pid: int) -> tuple[float, int, float]:
    """RSS in MiB, threads, CPU seconds (user+sys) of a process and its children threads."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
    threads = int(
        next(line.split()[1] for line in status.splitlines() if line.startswith("Threads"))
    )
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return rss / 1024, threads, ticks / 100.0


def get_latency(client: httpx.Client, path: str, n: int = 200) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        client.get(path)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--sample", type=float, default=30.0)
    args = parser.parse_args()
    # stopped with kill (or from a background shell, where SIGINT is ignored): still stop the
    # servers this benchmark started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="ascob-capacity-"))
    prefect = PrefectServer(work).start()
    app = Ascob(
        work,
        prefect.api_url,
        env={
            "ASCOB_POLL_INTERVAL": "10",
            "ASCOB_LOG_LEVEL": "INFO",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        },
    ).start()
    client = httpx.Client(base_url=app.url, headers={"X-Api-Token": "rootToken"}, timeout=60)
    spec = {
        "description": "capacity",
        "labels": {"_execution_backend_id": "dummyBackend", "status": "RUNNING"},
    }
    assert app.proc.proc is not None
    pid = app.proc.proc.pid
    client.post("/api/runs", json={"jobSpec": {**spec, "manualStart": True}})
    idle = get_latency(client, "/api/runs/1")
    rss0, threads0, _ = proc_stats(pid)
    print(f"idle: RSS {rss0:.0f} MiB, {threads0} threads, GET p50 {idle * 1000:.1f} ms")
    submitted: list[int] = []
    try:
        for target in args.runs:
            t0 = time.perf_counter()
            new = target - len(submitted)
            while len(submitted) < target:
                r = client.post("/api/runs", json={"jobSpec": spec})
                submitted.append(r.json()["runId"])

            def running(want: int = target) -> bool:
                # the search API caps its results; count in the repository itself
                with sqlite3.connect(app.home / "ascob.db", timeout=30) as db:
                    (n,) = db.execute("select count(*) from runs where status='RUNNING'").fetchone()
                return int(n) >= want

            wait_until(running, 3600, f"{target} runs RUNNING", interval=2)
            ramp = time.perf_counter() - t0
            _, _, cpu_a = proc_stats(pid)
            t = time.perf_counter()
            time.sleep(args.sample)
            rss, threads, cpu_b = proc_stats(pid)
            cpu = (cpu_b - cpu_a) / (time.perf_counter() - t)
            busy = get_latency(client, f"/api/runs/{submitted[-1]}")
            print(
                f"{target:5d} live runs: RSS {rss:.0f} MiB, {threads} threads, "
                f"CPU {cpu:.2f} core while waiting, GET p50 {busy * 1000:.1f} ms "
                f"({busy / idle:.1f}x idle), started in {ramp:.0f} s "
                f"({new} new runs at {new / ramp:.1f} runs/s)",
                flush=True,
            )
    finally:
        app.stop()
        prefect.stop()


if __name__ == "__main__":
    main()
