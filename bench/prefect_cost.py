"""Issue 20 (1): where the Prefect server's CPU per run goes, what a run writes and calls.

    .venv/bin/python -m bench.prefect_cost [--jobs 150] [--inflight 16] [--bare gather]
        [--bare-concurrency 16] [--prefect-db sqlite|postgres] [--rate 20] [--no-profile]
        [--env KEY=VALUE ...]
    .venv/bin/python -m bench.prefect_cost --summarize PROFILE.txt --jobs N   # a saved profile

In one run: ``ascob serve`` as the README starts it (its own local Prefect server: SQLite in
``$ASCOB_HOME/prefect``, or PostgreSQL with ``--prefect-db postgres``, Debian's package started
here on loopback), then two phases against that same Prefect server, each starting and ending
on an idle server (under 8 % of a core for 2 s, so the server's backlog after the runs, events
and task-run states still being written, counts as the phase's cost):

- **ascob**: ``--jobs`` dummy jobs posted to ``POST /api/runs``, ``--inflight`` requests at once,
  until the repository shows them all final;
- **bare**: the same number of in-process flows ``bench-job`` (``bench/throughput.py``: the
  same four tasks, ``engine_compat`` set-up, one shared client), ``--bare-concurrency`` at once.

For each phase: the Prefect server's CPU seconds per job (``/proc``: the server process and its
children, reaped ones included), the client's (``ascob serve`` without its server; the bare
flows' process), the rows each table of the server's database gained per job,
the Prefect API calls per job by route (counted in the client processes: ``bench/callcount``),
the requests the server refused (503); a py-spy profile of the server
(``--subprocesses --native``, collapsed stacks; both phases, so that the profiler's cost is the
same on both sides; ``--no-profile`` for figures without it), summarised by who spends the CPU (API
route, service loop, SQLite thread, HTTP layer) and by what code runs (SQLAlchemy, SQLite,
pydantic, ...), scaled to the CPU measured from ``/proc``. Native frames tell a thread that
runs from one the OS calls runnable while it waits for the GIL or a lock: those samples are
left out.

``--env KEY=VALUE`` adds settings to ``ascob serve`` (and so to its Prefect server): to measure
one candidate cut against the same run's bare baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tests.harness import ROOT, Ascob, free_port, wait_until

FINAL = ("SUCCEDED", "FAILED", "ABORTED", "IN_DOUBT")
CALLCOUNT = Path(__file__).resolve().parent / "callcount"
SPEC = {"description": "dummy", "labels": {"_execution_backend_id": "dummyBackend"}}


# ---------------------------------------------------------------------- the server's processes


def descendants(pid: int) -> list[int]:
    """The process and every process under it (from each process's parent in ``/proc``)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def find_prefect_server(ascob_pid: int) -> int:
    """The ``prefect server start`` process that ``ascob serve`` started."""
    for pid in descendants(ascob_pid):
        args = cmdline(pid)
        if "prefect" in " ".join(args) and "server" in args and "start" in args:
            return pid
    raise RuntimeError(f"no Prefect server under ascob (pid {ascob_pid})")


class TreeCpu:
    """CPU seconds of a process and its children (live ones, and reaped ones via cutime)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def _stat(self, pid: int, with_children: bool) -> int:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        except OSError:
            return 0
        ticks = int(fields[11]) + int(fields[12])
        return ticks + (int(fields[13]) + int(fields[14]) if with_children else 0)

    def seconds(self) -> float:
        pids = descendants(self.pid)
        return sum(self._stat(p, with_children=True) for p in pids) / self.tick

    def wait_idle(self, below: float = 0.08, window: float = 2.0, limit: float = 300.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            before = self.seconds()
            time.sleep(window)
            if (self.seconds() - before) / window < below:
                return


# ---------------------------------------------------------------------- the server's database


class RowCounter:
    def __init__(self, sqlite_path: Path | None = None, pg_url: str | None = None) -> None:
        self.sqlite_path, self.pg_url = sqlite_path, pg_url

    def counts(self) -> dict[str, int]:
        if self.pg_url is not None:
            import psycopg

            with psycopg.connect(self.pg_url) as db:
                names = [
                    r[0]
                    for r in db.execute(
                        "select tablename from pg_tables where schemaname = 'public'"
                    ).fetchall()
                ]
                out = {}
                for n in names:
                    row = db.execute(f'select count(*) from "{n}"').fetchone()
                    out[n] = int(row[0]) if row else 0
                return out
        import sqlite3

        assert self.sqlite_path is not None
        with sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=60) as db:
            names = [
                r[0]
                for r in db.execute(
                    "select name from sqlite_master"
                    " where type = 'table' and name not like 'sqlite_%'"
                )
            ]
            return {n: int(db.execute(f'select count(*) from "{n}"').fetchone()[0]) for n in names}


# ---------------------------------------------------------------------- API call counts


def read_calls(prefix: Path) -> Counter[str]:
    total: Counter[str] = Counter()
    for f in prefix.parent.glob(prefix.name + ".*.json"):
        try:
            total.update(json.loads(f.read_text()))
        except (OSError, ValueError):
            pass
    return total


# ---------------------------------------------------------------------- profile summary

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_SKIP_API = {"server", "dependencies", "validation", "middleware", "router", "__init__"}


def _parse(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m.group("func"), m.group("file")


_WAITS = {
    "take_gil",  # runnable, waiting for the GIL: another thread's CPU, not this one's
    "PyThread_acquire_lock_timed",
    "epoll_wait",
    "epoll_pwait",
    "poll",
    "select",
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "sem_wait",
    "sem_timedwait",
    "sem_clockwait",
    "clock_nanosleep",  # a sleep: SQLite's busy handler waiting for the write lock, mostly
    "nanosleep",
    "usleep",
}


def waiting(frames: list[tuple[str, str]]) -> str | None:
    """Why a sample spent no CPU (py-spy counts a thread the OS calls runnable: one woken to
    wait for the GIL is); None for a sample that ran."""
    for func, _ in frames:
        if func == "take_gil":
            return "waiting for the GIL"
        if func in _WAITS:
            return "blocked (poll, lock, queue)"
    return None


def owner_of(frames: list[tuple[str, str]]) -> str:
    """Who spends a sample: the outermost API route handler of the stack, else the service,
    the event pipeline or the thread it runs in."""
    for func, file in frames:  # root -> leaf
        m = re.search(r"prefect/server/api/(?:ui/)?(\w+)\.py$", file)
        if m and m.group(1) not in _SKIP_API:
            return f"API {m.group(1)}.{func}"
    for _, file in frames:
        m = re.search(r"prefect/server/events/services/(\w+)\.py$", file)
        if m:
            return f"service: events {m.group(1)}"
        m = re.search(r"prefect/server/services/(\w+)\.py$", file)
        if m and m.group(1) not in ("base", "__init__"):
            return f"service: {m.group(1)}"
    files = " ".join(f for _, f in frames)
    if "rich/" in files or "traceback.py" in files:
        return "server logging a traceback (rich console)"
    if re.search(r"prefect/server/events/(stream|pipeline|counting|ordering)", files):
        return "events: stream, ordering (no service named)"
    if "prefect/server/utilities/messaging" in files:
        return "events: in-memory messaging (no service named)"
    if "docket" in files or "redis" in files:
        return "docket + in-memory redis (perpetual services' scheduler)"
    if "aiosqlite/core.py" in files:
        return "SQLite worker thread (aiosqlite: the SQL of every route and service)"
    if "sqlalchemy/" in files:
        return "SQLAlchemy in a greenlet (its caller is not on the stack)"
    if "asyncpg" in files:
        return "asyncpg (PostgreSQL protocol)"
    if "fastapi/routing.py" in files:
        return "FastAPI: request parsing, validation, response serialisation"
    if re.search(r"starlette/|uvicorn/|h11/|httptools|websockets/", files):
        return "HTTP server (uvicorn, starlette middleware, websockets)"
    if "logging/" in files or "prefect/logging" in files:
        return "server logging"
    if "asyncio/" in files or "uvloop" in files or "loop.c" in files:
        return "event loop (uvloop, asyncio callbacks)"
    if "gc_collect" in " ".join(f for f, _ in frames):
        return "garbage collector"
    return "other"


_LAYERS = [
    ("SQLite (C library, via aiosqlite)", ("sqlite3", "aiosqlite/", "libsqlite")),
    ("asyncpg", ("asyncpg/",)),
    ("SQLAlchemy (compile, execute, rows, ORM)", ("sqlalchemy/",)),
    ("pydantic (validation, serialisation)", ("pydantic/", "pydantic_core")),
    ("JSON (orjson, json)", ("orjson", "json/")),
    (
        "HTTP/ASGI (uvicorn, starlette, fastapi, websockets)",
        ("uvicorn/", "starlette/", "fastapi/", "h11/", "httptools", "websockets/"),
    ),
    ("Prefect server code", ("prefect/server/",)),
    ("Prefect shared code (schemas, settings, utilities)", ("prefect/",)),
    ("logging (traceback formatting, rich console)", ("logging/", "rich/", "traceback.py")),
    ("asyncio / anyio / uvloop", ("asyncio/", "anyio/", "uvloop", "loop.c", "libuv")),
    ("garbage collector", ("gc_collect",)),
]


def layer_of(frames: list[tuple[str, str]]) -> str:
    """What code runs in a sample: the library of the innermost frame that names one."""
    for func, file in reversed(frames):
        text = f"{file} {func}"
        for name, marks in _LAYERS:
            if any(mark in text for mark in marks):
                return name
    return "other (C builtins, interpreter)"


def summarize(profile: Path, jobs: int, cpu_ms_per_job: float | None, rate: float) -> str:
    """Markdown tables of where the server's CPU goes, from py-spy's collapsed stacks."""
    owners: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    cross: dict[str, Counter[str]] = defaultdict(Counter)
    leaves: Counter[str] = Counter()
    idle: Counter[str] = Counter()
    total = 0
    for line in profile.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_parse(f) for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if f[0] and not f[0].startswith("thread (")]
        if not frames:
            continue
        why = waiting(frames)
        if why is not None:
            idle[why] += n
            continue
        o, lay = owner_of(frames), layer_of(frames)
        owners[o] += n
        layers[lay] += n
        cross[o][lay] += n
        func, file = frames[-1]
        leaves[f"{func} ({file.split('site-packages/')[-1]})"] += n
        total += n
    if not total:
        return "(no samples)\n"
    sampled_ms = total * 1000.0 / rate / jobs
    scale = (cpu_ms_per_job / sampled_ms) if cpu_ms_per_job else 1.0
    out = [
        f"py-spy: {total} samples running at {rate:g}/s = {sampled_ms:.0f} ms per job sampled"
        + "".join(f", {n} {why} (left out)" for why, n in idle.items())
        + (
            f"; /proc says {cpu_ms_per_job:.0f} ms per job (ms below scaled to it)"
            if cpu_ms_per_job
            else ""
        ),
        "",
        "| who spends it | ms per job | % | of which SQLAlchemy | of which pydantic |",
        "|---|---|---|---|---|",
    ]
    sqla, pyd = _LAYERS[2][0], _LAYERS[3][0]
    for name, n in owners.most_common():
        share = n / total
        c = cross[name]
        out.append(
            f"| {name} | {share * sampled_ms * scale:.1f} | {share * 100:.1f} | "
            f"{c[sqla] / n * 100:.0f} % | {c[pyd] / n * 100:.0f} % |"
        )
    out += ["", "| what code runs | ms per job | % |", "|---|---|---|"]
    for name, n in layers.most_common():
        out.append(f"| {name} | {n / total * sampled_ms * scale:.1f} | {n / total * 100:.1f} |")
    out += ["", "| innermost function (self time), top 15 | % |", "|---|---|"]
    for name, n in leaves.most_common(15):
        out.append(f"| `{name}` | {n / total * 100:.1f} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- the phases


async def submit_all(url: str, n: int, inflight: int) -> list[int]:
    import httpx

    gate = asyncio.Semaphore(inflight)
    async with httpx.AsyncClient(
        base_url=url, headers={"X-Api-Token": "rootToken"}, timeout=60
    ) as client:

        async def one() -> int:
            async with gate:
                r = await client.post("/api/runs", json={"jobSpec": SPEC})
                r.raise_for_status()
                return int(r.json()["runId"])

        return list(await asyncio.gather(*(one() for _ in range(n))))


def ascob_statuses(home: Path, ids: list[int]) -> dict[str, int]:
    import sqlite3

    with sqlite3.connect(home / "ascob.db", timeout=30) as db:
        rows = db.execute(
            "select status, count(*) from runs where id between ? and ? group by status",
            (min(ids), max(ids)),
        ).fetchall()
    return {str(s): int(n) for s, n in rows}


def run_ascob(app: Ascob, n: int, inflight: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    ids = asyncio.run(submit_all(app.url, n, inflight))
    counts: dict[str, int] = {}

    def done() -> bool:
        nonlocal counts
        counts = ascob_statuses(app.home, ids)
        return sum(counts.get(s, 0) for s in FINAL) >= n

    wait_until(done, 1800, f"{n} ascob runs final", interval=0.1)
    return {"seconds": time.perf_counter() - t0, "states": counts}


def run_bare(
    api_url: str, work: Path, mode: str, n: int, concurrency: int, calls: Path
) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.throughput", "--inprocess", mode, "--compat"]
    args += ["--jobs", str(n), "--warmup", "0", "--concurrency", str(concurrency)]
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(work / "prefect-client"),
        "PYTHONPATH": os.pathsep.join([str(CALLCOUNT), str(ROOT)]),
        "ASCOB_BENCH_CALLS": str(calls),
    }
    import resource

    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with (work / f"bare-{mode}.log").open("ab") as fh:
        out = subprocess.run(
            args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=fh, timeout=1800, check=False
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    for line in out.stdout.decode().splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            result["wall"] = time.perf_counter() - t0
            result["client_cpu"] = client_cpu
            return result
    raise RuntimeError(f"bare flows failed (rc {out.returncode}); see {work}/bare-{mode}.log")


def machine_state() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"load average {' '.join(load)}, {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--inflight", type=int, default=16, help="POST /api/runs at once")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--bare", nargs="*", default=["gather"], choices=["gather", "deployment"])
    parser.add_argument("--bare-concurrency", type=int, default=16)
    parser.add_argument("--prefect-db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--rate", type=float, default=20, help="py-spy samples per second (--native: costly)"
    )
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for ascob serve")
    parser.add_argument("--summarize", type=Path, help="summarise a saved py-spy profile")
    parser.add_argument("--cpu-ms", type=float, help="with --summarize: /proc ms per job")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize, args.jobs, args.cpu_ms, args.rate))
        return

    work = Path(tempfile.mkdtemp(prefix="ascob-cost-"))
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"work folder {work}; code {head} + working tree; {machine_state()}", flush=True)
    extra = dict(kv.split("=", 1) for kv in args.env)
    postgres = None
    pg_url = None
    if args.prefect_db == "postgres":
        from tests.postgres_server import PostgresServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("--prefect-db postgres needs Debian's postgresql package")
        postgres = PostgresServer(bindir, database="prefect").start()
        pg_url = postgres.url
        extra["PREFECT_API_DATABASE_CONNECTION_URL"] = pg_url.replace(
            "postgresql://", "postgresql+asyncpg://", 1
        )
    port = free_port()
    calls_ascob = work / "calls-ascob"
    env = {
        "PREFECT_API_URL": "",  # as the README starts it: ascob serve starts its own server
        "ASCOB_PREFECT_PORT": str(port),
        "ASCOB_POLL_INTERVAL": "5",
        "ASCOB_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join([str(CALLCOUNT), str(ROOT)]),
        "ASCOB_BENCH_CALLS": str(calls_ascob),
        **extra,
    }
    app = Ascob(work, "", env=env)
    app.proc.env.pop("ASCOB_DEPLOYMENT", None)  # the default deployment name, as the README
    api_url = f"http://127.0.0.1:{port}/api"
    server_pid = 0
    results: dict[str, dict[str, Any]] = {}
    try:
        app.start(timeout=240)
        assert app.proc.proc is not None
        server_pid = find_prefect_server(app.proc.proc.pid)
        cpu = TreeCpu(server_pid)
        ascob_cpu = TreeCpu(app.proc.proc.pid)  # minus the server's: ascob's own CPU
        rows = RowCounter(
            sqlite_path=None if pg_url else app.home / "prefect" / "prefect.db", pg_url=pg_url
        )
        run_ascob(app, args.warmup, args.inflight)
        run_bare(api_url, work, args.bare[0], 2, 2, work / "calls-warmup")

        def phase(name: str, run: Any, calls: Path, profile: Path | None) -> None:
            cpu.wait_idle()
            state = machine_state()
            before_rows, before_calls = rows.counts(), read_calls(calls)
            cpu0, ascob0 = cpu.seconds(), ascob_cpu.seconds()
            spy = None
            if profile is not None:
                spy = subprocess.Popen(
                    [
                        *(str(Path(sys.executable).parent / "py-spy"), "record"),
                        *("--pid", str(server_pid), "--subprocesses", "--native"),
                        *("--format", "raw", "--rate", str(args.rate), "-o", str(profile)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=(work / "py-spy.log").open("ab"),
                )
                time.sleep(1.0)
            try:
                result = run()
                cpu.wait_idle()
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
                    spy.wait(60)
            seconds = cpu.seconds() - cpu0
            client = result.pop("client_cpu", None)
            if client is None:  # the ascob phase: ascob serve's process tree minus its server's
                client = ascob_cpu.seconds() - ascob0 - seconds
            result["client_ms"] = client / args.jobs * 1000
            after_rows, after_calls = rows.counts(), read_calls(calls)
            result["server_ms"] = seconds / args.jobs * 1000
            # counted by the clients: the server's own log of a refusal (a rich traceback)
            # would cost it more CPU than the refusal itself
            result["503s"] = sum(
                v - before_calls.get(k, 0) for k, v in after_calls.items() if k[:1] == "5"
            )
            result["rows"] = {
                t: (after_rows.get(t, 0) - before_rows.get(t, 0)) / args.jobs for t in after_rows
            }
            result["calls"] = {
                k: (v - before_calls.get(k, 0)) / args.jobs for k, v in after_calls.items()
            }
            result["machine"] = f"{state} -> {machine_state()}"
            results[name] = result
            print(
                f"  {name:16s} {args.jobs} jobs in {result['seconds']:.1f} s, "
                f"{result['503s']} x 503, Prefect server {result['server_ms']:.0f} ms CPU per job, "
                f"{result['states']}; {result['machine']}",
                flush=True,
            )

        def profile_of(name: str) -> Path | None:
            return None if args.no_profile else work / f"py-spy-{name.replace(' ', '-')}.txt"

        phase(
            "ascob",
            lambda: run_ascob(app, args.jobs, args.inflight),
            calls_ascob,
            profile_of("ascob"),
        )
        for mode in args.bare:
            calls = work / f"calls-bare-{mode}"
            phase(
                f"bare {mode}",
                lambda mode=mode, calls=calls: run_bare(
                    api_url, work, mode, args.jobs, args.bare_concurrency, calls
                ),
                calls,
                profile_of(f"bare {mode}"),
            )
    finally:
        app.stop()
        if server_pid and Path(f"/proc/{server_pid}").exists():
            os.kill(server_pid, signal.SIGTERM)  # ours, if ascob left it behind
        if postgres is not None:
            postgres.stop()

    (work / "results.json").write_text(json.dumps(results, indent=1))
    names = list(results)
    print(f"\n## Prefect server CPU per job ({args.prefect_db}, {args.jobs} jobs each)\n")
    print(
        "| phase | server ms CPU per job | ratio to bare | client ms CPU per job | 503s "
        "| seconds | jobs/s | states |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = results.get(names[-1], {}).get("server_ms") if len(names) > 1 else None
    for name in names:
        r = results[name]
        ratio = f"{r['server_ms'] / base:.2f}x" if base else ""
        print(
            f"| {name} | {r['server_ms']:.0f} | {ratio} | {r['client_ms']:.0f} | {r['503s']} | "
            f"{r['seconds']:.1f} | {args.jobs / r['seconds']:.2f} | {r['states']} |"
        )
    print("\n## Rows written per job, by table\n")
    print("| table | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    tables = sorted({t for r in results.values() for t, v in r["rows"].items() if v})
    for t in tables:
        print(f"| {t} | " + " | ".join(f"{results[n]['rows'].get(t, 0):.2f}" for n in names) + " |")
    print("\n## Prefect API calls per job, by route (counted in the clients)\n")
    print("| call | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    routes = sorted({k for r in results.values() for k, v in r["calls"].items() if v})
    for k in routes:
        print(
            f"| `{k}` | " + " | ".join(f"{results[n]['calls'].get(k, 0):.2f}" for n in names) + " |"
        )
    for name in names:
        profile = None if args.no_profile else work / f"py-spy-{name.replace(' ', '-')}.txt"
        if profile is not None and profile.exists():
            print(f"\n## Where the server's CPU goes, phase {name} ({profile})\n")
            print(summarize(profile, args.jobs, results[name]["server_ms"], args.rate))


if __name__ == "__main__":
    main()
