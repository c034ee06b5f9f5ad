"""Issue "ascob serve end to end" figures: start-up, submit latency, end-to-end dummy job.

    .venv/bin/python -m bench.serve [--submits 1000] [--jobs 30]

Every figure comes with a baseline measured in the same run on the same machine, because these
machines are shared and noisy: submit latency against ``GET /api/health`` on the same server
(the HTTP + auth-free floor), end-to-end against a bare Prefect flow run of one no-op task on the
same Prefect server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.harness import Ascob, PrefectServer, wait_until


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def bare_prefect_flow_seconds(api_url: str, n: int) -> list[float]:
    """Baseline: one in-process Prefect flow run with one task, against the same server."""
    import os

    os.environ["PREFECT_API_URL"] = api_url
    from prefect import flow, task

    @task
    async def noop() -> int:
        return 1

    @flow(name="bench-baseline", persist_result=False)
    async def baseline() -> int:
        return await noop()

    out = []
    for _ in range(n):
        t = time.perf_counter()
        asyncio.run(baseline())
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ascob-bench-"))

    t0 = time.perf_counter()
    prefect = PrefectServer(work).start()
    prefect_start = time.perf_counter() - t0

    app = Ascob(work, prefect.api_url)
    t0 = time.perf_counter()
    app.start()
    ascob_start = time.perf_counter() - t0
    try:
        client = httpx.Client(base_url=app.url, headers={"X-Api-Token": "rootToken"})
        spec = {
            "description": "dummy",
            "labels": {"_execution_backend_id": "dummyBackend", "status": "RUNNING"},
            "manualStart": True,
        }
        for _ in range(20):  # warm-up
            client.get("/api/health")
            client.post("/api/runs", json={"jobSpec": spec})
        health, submit = [], []
        for _ in range(args.submits):
            t = time.perf_counter()
            client.get("/api/health")
            health.append(time.perf_counter() - t)
            t = time.perf_counter()
            r = client.post("/api/runs", json={"jobSpec": spec})
            submit.append(time.perf_counter() - t)
            assert r.status_code == 200

        e2e = []
        dummy = {"description": "dummy", "labels": {"_execution_backend_id": "dummyBackend"}}
        for _ in range(args.jobs):
            t = time.perf_counter()
            run_id = client.post("/api/runs", json={"jobSpec": dummy}).json()["runId"]
            wait_until(
                lambda rid=run_id: client.get(f"/api/runs/{rid}").json()["status"] == "SUCCEDED",
                120,
                "SUCCEDED",
                interval=0.02,
            )
            e2e.append(time.perf_counter() - t)
    finally:
        app.stop()
    baseline = bare_prefect_flow_seconds(prefect.api_url, args.jobs)
    prefect.stop()

    print(f"Prefect server start (cold, SQLite):      {prefect_start:.1f} s")
    print(
        f"ascob serve start to first answer:        {ascob_start:.1f} s (Prefect server already up)"
    )
    print(
        f"submit latency p50 / p99 ({args.submits}):      {ms(pct(submit, 0.5))} / "
        f"{ms(pct(submit, 0.99))}"
    )
    print(
        f"  baseline GET /api/health p50 / p99:     {ms(pct(health, 0.5))} / "
        f"{ms(pct(health, 0.99))}"
    )
    print(f"  ratio submit/health p50:                {pct(submit, 0.5) / pct(health, 0.5):.1f}x")
    print(
        f"dummy job submit -> SUCCEDED p50 / max:   {ms(statistics.median(e2e))} / {ms(max(e2e))}"
    )
    print(f"  baseline bare Prefect flow run p50:     {ms(statistics.median(baseline))}")
    print(
        f"  ratio ascob/bare:                       "
        f"{statistics.median(e2e) / statistics.median(baseline):.1f}x"
    )


if __name__ == "__main__":
    main()
