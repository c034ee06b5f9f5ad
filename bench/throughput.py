"""Issue "Prefect engine at scale" (b): end-to-end throughput of dummy jobs, with baselines.

    .venv/bin/python -m bench.throughput [--jobs 50] [--serve-jobs 6] [--concurrency 0]
        [--rounds 1] [--profile] [--prefect-db sqlite|postgres]

Starts one Prefect server (SQLite by default, or PostgreSQL; loopback) and measures against it,
in the same run:

- **ascob**: one ``ascob serve`` process; ``--jobs`` dummy jobs submitted concurrently through
  ``POST /api/runs`` (16 requests in flight, as a busy portal would), timed from the first
  submit until the repository shows them all SUCCEDED;
- **in-process baselines**: the flow ``bench-job`` with the same four tasks as ``ascob-job``
  (acquire-locks -> dispatch -> poll-to-completion -> release-locks, each returning a dummy
  value), ``--jobs`` runs at once in one fresh Python process:

  * ``gather``: ``asyncio.gather`` of plain flow calls (no deployment);
  * ``deployment``: per run ``create_flow_run_from_deployment``, propose Pending, then
    ``prefect.flow_engine.run_flow_async`` -- what ASCOB's executor does for each run;

  each once with Prefect's defaults and once with ASCOB's executor set-up
  (``ascob_flows.engine_compat``: no heartbeat thread, no suspension observer, cached result
  storage lookup; plus one shared API client, as the executor has);
- **serve**: ``bench_job.serve()`` (Prefect's Runner: a subprocess per flow run) in its own
  process; ``--serve-jobs`` runs triggered with ``run_deployment(..., timeout=0)``, timed until
  all are Completed. The Runner polls every ``PREFECT_RUNNER_POLL_FREQUENCY`` (default 10 s);
  the bench sets 1 s so that polling does not count against ``serve()``.

Every variant first runs ``--warmup`` jobs untimed. Throughput = jobs / wall-clock seconds. Each
variant starts on an idle Prefect server (under 8 % of a core for 2 s): the server writes task-run
states and events for a while after the runs end, and that backlog must not slow the next
variant. The server's CPU time from a variant's start until it is idle again, per job, is the
variant's cost on the server (column ``server ms/job``), a figure less noisy than throughput.
With ``--rounds R`` every variant is measured R times, each round starting with another variant,
and the table shows the median and the range.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

FLOW_NAME = "bench-job"
DEPLOYMENT = "bench-inprocess"
SERVE_DEPLOYMENT = "bench-serve"


# ---------------------------------------------------------------------- the baseline flow


@task(name="acquire-locks", cache_policy=NO_CACHE, persist_result=False)
async def acquire_locks(run_id: int) -> dict[str, int]:
    return {}


@task(name="dispatch", cache_policy=NO_CACHE, persist_result=False)
async def dispatch(run_id: int, tokens: dict[str, int]) -> dict[str, str]:
    return {"jobId": f"dummy-{run_id}"}


@task(name="poll-to-completion", cache_policy=NO_CACHE, persist_result=False)
async def poll_to_completion(run_id: int, keys: dict[str, str]) -> str:
    return "SUCCEEDED"


@task(name="release-locks", cache_policy=NO_CACHE, persist_result=False)
async def release_locks(run_id: int) -> None:
    return None


@flow(name=FLOW_NAME, persist_result=False)
async def bench_job(run_id: int = 0) -> str:
    """The shape of ``ascob-job`` with a dummy backend's trivial work."""
    tokens = await acquire_locks(run_id)
    keys = await dispatch(run_id, tokens)
    status = await poll_to_completion(run_id, keys)
    await release_locks(run_id)
    return status


# ---------------------------------------------------------------------- in-process (child)


async def _inprocess(
    mode: str, compat: bool, jobs: int, warmup: int, concurrency: int
) -> dict[str, Any]:
    from contextlib import AsyncExitStack

    from prefect.client.orchestration import get_client
    from prefect.context import AsyncClientContext
    from prefect.flow_engine import run_flow_async
    from prefect.server.schemas.responses import SetStateStatus
    from prefect.states import Pending

    async with AsyncExitStack() as stack:
        if compat:
            from ascob_flows.engine_compat import engine_settings, tune_flow_engine

            tune_flow_engine()
            stack.enter_context(engine_settings())
            client = (await stack.enter_async_context(AsyncClientContext.get_or_create())).client
        else:
            client = await stack.enter_async_context(get_client())

        deployment_id = None
        if mode == "deployment":
            flow_id = await client.create_flow(bench_job)
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name=DEPLOYMENT,
                entrypoint="bench/throughput.py:bench_job",
                enforce_parameter_schema=False,
                paused=False,
            )

        async def one(i: int) -> str:
            if deployment_id is None:
                state = await bench_job(run_id=i, return_state=True)  # type: ignore[call-overload]
                return str(state.type.value)
            flow_run = await client.create_flow_run_from_deployment(
                deployment_id, parameters={"run_id": i}
            )
            claimed = await client.set_flow_run_state(flow_run.id, Pending(), force=False)
            if claimed.status != SetStateStatus.ACCEPT:
                return "NOT_CLAIMED"
            flow_run.state = claimed.state
            state = await run_flow_async(
                bench_job, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
            )
            return str(state.type.value)  # type: ignore[union-attr]

        gate = asyncio.Semaphore(concurrency if concurrency > 0 else jobs + warmup)

        async def safe(i: int) -> str:
            try:
                async with gate:
                    return await one(i)
            except Exception as exc:  # e.g. a 503 after the client's 5 retries
                return f"error {type(exc).__name__}"

        await asyncio.gather(*(safe(-1 - i) for i in range(warmup)))
        t0 = time.perf_counter()
        states = await asyncio.gather(*(safe(i) for i in range(jobs)))
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "states": {s: states.count(s) for s in set(states)}}


def inprocess_child(args: argparse.Namespace) -> None:
    result = asyncio.run(
        _inprocess(args.inprocess, args.compat, args.jobs, args.warmup, args.concurrency)
    )
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------- serve() (child)


def serve_child(args: argparse.Namespace) -> None:
    bench_job.serve(name=SERVE_DEPLOYMENT, print_starting_message=False)


# ---------------------------------------------------------------------- parent


def _counted() -> dict[str, str]:
    """Environment that makes a client process count its API calls and refusals (503s) in
    ``$ASCOB_BENCH_CALLS.<pid>.json`` (``bench/callcount``; :func:`main` sets the prefix)."""
    from bench.prefect_cost import CALLCOUNT
    from tests.harness import ROOT

    return {"PYTHONPATH": os.pathsep.join([str(CALLCOUNT), str(ROOT)])}


def _count_here() -> None:
    import importlib.util

    from bench.prefect_cost import CALLCOUNT

    spec = importlib.util.spec_from_file_location("bench_callcount", CALLCOUNT / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def _child_env(api_url: str, home: Path, **extra: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        **_counted(),
        **extra,
    }


def measure_inprocess(
    api_url: str, work: Path, mode: str, compat: bool, jobs: int, warmup: int, concurrency: int
) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.throughput", "--inprocess", mode]
    args += ["--jobs", str(jobs), "--warmup", str(warmup), "--concurrency", str(concurrency)]
    if compat:
        args.append("--compat")
    from tests.harness import ROOT

    log = work / f"inprocess-{mode}-{'compat' if compat else 'defaults'}.log"
    env = _child_env(api_url, work / "prefect-client")
    with log.open("ab") as fh:
        out = subprocess.run(
            args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=fh, timeout=1800, check=False
        )
    for line in out.stdout.decode().splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"in-process baseline {mode} failed (rc {out.returncode}); see {log}")


class AscobTarget:
    def __init__(self, api_url: str, work: Path) -> None:
        from tests.harness import Ascob

        self.app = Ascob(
            work,
            api_url,
            env={"ASCOB_POLL_INTERVAL": "5", "ASCOB_LOG_LEVEL": "WARNING", **_counted()},
        )
        self.spec = {
            "description": "dummy",
            "labels": {"_execution_backend_id": "dummyBackend"},
        }

    def start(self) -> None:
        self.app.start()
        assert self.app.proc.proc is not None
        self.pid = self.app.proc.proc.pid

    def stop(self) -> None:
        self.app.stop()

    def statuses(self, ids: list[int]) -> dict[str, int]:
        import sqlite3

        with sqlite3.connect(self.app.home / "ascob.db", timeout=30) as db:
            rows = db.execute(
                "select status, count(*) from runs where id between ? and ? group by status",
                (min(ids), max(ids)),
            ).fetchall()
        return {str(s): int(n) for s, n in rows}

    async def _submit(self, n: int) -> list[int]:
        import httpx

        gate = asyncio.Semaphore(16)
        async with httpx.AsyncClient(
            base_url=self.app.url, headers={"X-Api-Token": "rootToken"}, timeout=60
        ) as client:

            async def one() -> int:
                async with gate:
                    r = await client.post("/api/runs", json={"jobSpec": self.spec})
                    r.raise_for_status()
                    return int(r.json()["runId"])

            return list(await asyncio.gather(*(one() for _ in range(n))))

    def run(self, n: int, profile: Path | None = None) -> dict[str, Any]:
        from tests.harness import wait_until

        spy = None
        if profile is not None:  # py-spy: collapsed stacks of every thread, GIL idle included
            spy = subprocess.Popen(
                [
                    *(str(Path(sys.executable).parent / "py-spy"), "record"),
                    *("--pid", str(self.pid), "--format", "raw", "--idle", "--threads"),
                    *("--rate", "50", "-o", str(profile)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        try:
            return self._run(n, wait_until)
        finally:
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
                spy.wait(30)

    def _run(self, n: int, wait_until: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        ids = asyncio.run(self._submit(n))
        submitted = time.perf_counter() - t0
        final = ("SUCCEDED", "FAILED", "ABORTED", "IN_DOUBT")
        counts: dict[str, int] = {}

        def done() -> bool:
            nonlocal counts
            counts = self.statuses(ids)
            return sum(counts.get(s, 0) for s in final) >= n

        wait_until(done, 1800, f"{n} ascob runs final", interval=0.05)
        return {"seconds": time.perf_counter() - t0, "submit_seconds": submitted, "states": counts}


class ServeTarget:
    def __init__(self, api_url: str, work: Path) -> None:
        from tests.harness import Proc

        env = _child_env(
            api_url,
            work / "prefect-serve",
            PREFECT_RUNNER_POLL_FREQUENCY="1",
        )
        self.proc = Proc(
            [sys.executable, "-m", "bench.throughput", "--serve-worker"],
            env,
            work / "serve.log",
        )
        self.api_url = api_url

    def start(self) -> None:
        from tests.harness import wait_until

        self.proc.start()

        async def ready() -> bool:
            from prefect.client.orchestration import get_client

            async with get_client() as client:
                try:
                    await client.read_deployment_by_name(f"{FLOW_NAME}/{SERVE_DEPLOYMENT}")
                    return True
                except Exception:
                    return False

        with self.settings():
            wait_until(
                lambda: asyncio.run(ready()) or not self.proc.alive(),
                120,
                "flow.serve() ready",
                0.5,
            )
        if not self.proc.alive():
            raise RuntimeError("flow.serve() exited:\n" + self.proc.tail())

    def stop(self) -> None:
        self.proc.stop()

    async def _run(self, n: int) -> dict[str, Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.deployments import run_deployment

        t0 = time.perf_counter()
        runs = await asyncio.gather(
            *(
                run_deployment(
                    f"{FLOW_NAME}/{SERVE_DEPLOYMENT}", parameters={"run_id": i}, timeout=0
                )
                for i in range(n)
            )
        )
        ids = [r.id for r in runs]
        async with get_client() as client:
            while True:
                got = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=n
                )
                states = [r.state.type.value if r.state else "NONE" for r in got]
                if sum(1 for r in got if r.state and r.state.is_final()) >= n:
                    break
                await asyncio.sleep(0.2)
        return {
            "seconds": time.perf_counter() - t0,
            "states": {s: states.count(s) for s in set(states)},
        }

    def run(self, n: int) -> dict[str, Any]:
        with self.settings():
            return asyncio.run(self._run(n))

    def settings(self) -> Any:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        return temporary_settings(updates={PREFECT_API_URL: self.api_url})


class ServerCpu:
    """CPU time of the Prefect server process (Linux ``/proc``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick

    def wait_idle(self, below: float = 0.08, window: float = 2.0, limit: float = 300.0) -> None:
        """Until the server used less than ``below`` of a core for ``window`` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            before = self.seconds()
            time.sleep(window)
            if (self.seconds() - before) / window < below:
                return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--serve-jobs", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="in-process baselines: flow runs at once (0: all --jobs at once)",
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="py-spy the ascob process")
    parser.add_argument("--skip", nargs="*", default=[], help="variants to leave out")
    parser.add_argument(
        "--prefect-db",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="the Prefect server's database (postgres: Debian's postgresql, started here)",
    )
    parser.add_argument("--inprocess", choices=["gather", "deployment"], help=argparse.SUPPRESS)
    parser.add_argument("--compat", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inprocess:
        return inprocess_child(args)
    if args.serve_worker:
        return serve_child(args)

    from tests.harness import PrefectServer

    work = Path(tempfile.mkdtemp(prefix="ascob-throughput-"))
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"work folder: {work}; code: {head} + working tree; {os.cpu_count()} CPUs", flush=True)
    # refusals (503, "database is locked": the client retries after 2, 4, 8, 16, 32 s; the
    # launcher at once) are counted in the clients, per variant: the server's own log of one
    # (PREFECT_API_LOG_RETRYABLE_ERRORS) is a rich traceback that costs it more CPU than the
    # refusal itself (docs/benchmarks.md)
    os.environ["ASCOB_BENCH_CALLS"] = str(work / "calls")
    _count_here()  # this process's calls too (serve()'s run_deployment)
    postgres = None
    database_url = None
    if args.prefect_db == "postgres":
        from tests.postgres_server import PostgresServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("--prefect-db postgres needs Debian's postgresql package")
        postgres = PostgresServer(bindir, database="prefect").start()
        database_url = postgres.url
    prefect = PrefectServer(work, database_url=database_url).start()
    print(f"Prefect server on {args.prefect_db}", flush=True)

    def busy_count() -> int:
        from bench.prefect_cost import read_calls

        return sum(n for k, n in read_calls(work / "calls").items() if k[:1] == "5")

    ascob = AscobTarget(prefect.api_url, work)
    serve = ServeTarget(prefect.api_url, work)
    server = ServerCpu(prefect.proc.proc.pid if prefect.proc.proc else 0)
    results: dict[str, list[dict[str, Any]]] = {}
    jobs_of: dict[str, int] = {}

    def measure(name: str, n: int, run: Any) -> None:
        # every variant starts on an idle server: the event backlog a variant leaves (the
        # server writes task-run states and events after the runs end) is counted as its own
        # cost, never as the next variant's slowness
        server.wait_idle()
        busy_before, cpu_before = busy_count(), server.seconds()
        result = run()
        server.wait_idle()
        # only jobs that ended well count: a flow run that gave up after five 503s is no job done
        result["ok"] = sum(result["states"].get(s, 0) for s in ("SUCCEDED", "COMPLETED"))
        result["jobs_per_s"] = result["ok"] / result["seconds"]
        result["503s"] = busy_count() - busy_before
        result["server_ms"] = (server.seconds() - cpu_before) / n * 1000
        jobs_of[name] = n
        results.setdefault(name, []).append(result)
        extra = f", submit {result['submit_seconds']:.1f} s" if "submit_seconds" in result else ""
        print(
            f"  {name:38s} {result['ok']:4d}/{n} ok in {result['seconds']:6.1f} s = "
            f"{result['jobs_per_s']:6.2f} jobs/s{extra}, {result['503s']} x 503, Prefect server "
            f"{result['server_ms']:4.0f} ms CPU per job  {result['states']}",
            flush=True,
        )

    variants: list[tuple[str, int, Any]] = []
    if "ascob" not in args.skip:
        variants.append(("ascob serve", args.jobs, None))
    for mode in ("gather", "deployment"):
        for compat in (False, True):
            if f"{mode}-{'compat' if compat else 'defaults'}" not in args.skip:
                name = f"in-process {mode}, {'engine_compat' if compat else 'defaults'}"
                variants.append((name, args.jobs, (mode, compat)))
    if "serve" not in args.skip:
        variants.append(("flow.serve()", args.serve_jobs, None))

    def runner(name: str, n: int, how: Any, r: int) -> Any:
        if name == "ascob serve":
            profile = work / f"ascob-py-spy-{r + 1}.txt" if args.profile else None
            return lambda: ascob.run(n, profile)
        if name == "flow.serve()":
            return lambda: serve.run(n)
        mode, compat = how
        return lambda: measure_inprocess(
            prefect.api_url, work, mode, compat, n, args.warmup, args.concurrency
        )

    try:
        if "ascob" not in args.skip:
            ascob.start()
            ascob.run(args.warmup)
        if "serve" not in args.skip:
            serve.start()
            serve.run(2)
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for name, n, how in order:  # each round starts with another variant
                measure(name, n, runner(name, n, how, r))
    finally:
        if "ascob" not in args.skip:
            ascob.stop()
        if "serve" not in args.skip:
            serve.stop()
        prefect.stop()
        if postgres is not None:
            postgres.stop()

    median = {k: statistics.median(r["jobs_per_s"] for r in v) for k, v in results.items()}
    cpu = {k: statistics.median(r["server_ms"] for r in v) for k, v in results.items()}
    print()
    cols = ("variant", "jobs", "ok jobs/s median", "range", "503s", "ascob ratio", "server ms/job")
    print(
        f"{cols[0]:38s} {cols[1]:>5s} {cols[2]:>17s} {cols[3]:>15s} {cols[4]:>6s} "
        f"{cols[5]:>12s} {cols[6]:>14s}"
    )
    for name, runs in results.items():
        rates = [r["jobs_per_s"] for r in runs]
        busy = statistics.median(r["503s"] for r in runs)
        ratio = median.get("ascob serve", float("nan")) / median[name] if median[name] else 0
        print(
            f"{name:38s} {jobs_of[name]:5d} {median[name]:17.2f} "
            f"{min(rates):7.2f}-{max(rates):<7.2f} {busy:6.0f} {ratio:11.2f}x {cpu[name]:14.0f}"
        )


if __name__ == "__main__":
    main()
