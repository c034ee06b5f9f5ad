"""A real Apache Airflow 3 on loopback, for the tests: api-server, scheduler and dag-processor.

Airflow is installed on first use into a virtual environment of its own, outside the repository
(``~/.cache/ascob-tests/airflow-<version>/``, or ``$ASCOB_TEST_CACHE``), with its ``postgres``
extra (the PostgreSQL driver): built in a temporary folder beside it and renamed into place only
once ``pip`` succeeded, so a crash never leaves a half-built venv that a later run would trust.
The completion mark inside names what was installed; a venv of an older mark (Airflow without
the extra) is upgraded in place: its mark is removed first and written again (atomically) once
``pip`` succeeded, so an interrupted upgrade leaves an unmarked venv, which the next run builds
again. Its commands run as ``<venv>/bin/python -m airflow`` (a renamed venv keeps working that
way).

The metadata database is PostgreSQL (:mod:`tests.postgres_server`, a throw-away cluster on
127.0.0.1 per server): on SQLite, Airflow's scheduler, dag-processor and api-server write to one
file and, on a loaded machine, time out on its lock ("database is locked"; the scheduler died of
it and the api-server stopped answering). A migrated schema is kept beside the venv as a plain
``pg_dump`` (``airflow db migrate`` takes a while on a busy machine); each server loads it with
``psql`` into its own database.

:class:`AirflowServer` writes an ``AIRFLOW_HOME`` in a temporary folder (PostgreSQL,
LocalExecutor, SimpleAuthManager with one user, no examples, short scan intervals for a 2-core
machine), the test DAGs of :data:`DAGS`, and starts ``airflow api-server`` (127.0.0.1, a free
port), ``airflow scheduler --skip-serve-logs`` (no log server: it would listen on every address)
and ``airflow dag-processor``. :meth:`AirflowServer.listening` lists the TCP sockets its
processes (and its PostgreSQL) listen on; :meth:`AirflowServer.start` asserts that none is on a
wildcard address. Teardown ends the process groups it started and its PostgreSQL, nothing else.

When Airflow or the PostgreSQL server binaries cannot be found or installed the tests skip,
except under CI (``CI`` is set), where they fail.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.harness import Proc, free_port, wait_until
from tests.postgres_server import PostgresServer

AIRFLOW_VERSION = "3.3.2"
USERNAME = "ascob"
PASSWORD = "airflow-test-password"
_COMPLETE = ".ascob-complete"  # written last inside a finished venv: what it holds


def requirement(version: str = AIRFLOW_VERSION) -> str:
    """What the venv installs: Airflow and its PostgreSQL driver (the ``postgres`` extra)."""
    return f"apache-airflow[postgres]=={version}"


def cache_root() -> Path:
    return Path(os.environ.get("ASCOB_TEST_CACHE") or Path.home() / ".cache" / "ascob-tests")


def _fail_or_skip(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> None:
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-3000:]}"
        )


def _mark(venv: Path, content: str) -> None:
    """Write the completion mark atomically (a crash leaves the old one or none)."""
    fresh = venv / f"{_COMPLETE}.{os.getpid()}"
    fresh.write_text(content)
    os.rename(fresh, venv / _COMPLETE)


def install(version: str = AIRFLOW_VERSION) -> Path:
    """The venv holding :func:`requirement`, installed on first use (under a lock, so two test
    sessions do not build it twice); a venv of an older mark is upgraded in place."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"airflow-{version}"
    wanted = requirement(version) + "\n"
    with (root / f".airflow-{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mark = venv / _COMPLETE
        if mark.is_file() and mark.read_text() == wanted:
            return venv
        if mark.is_file():  # a finished venv of an older content (no driver): add to it
            mark.unlink()  # untrusted until pip has succeeded
            for stale in venv.glob("template-*.db"):  # the SQLite template of before
                stale.unlink()
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
            _run([*pip, requirement(version)])
            _mark(venv, wanted)
            return venv
        if venv.exists():  # not ours to trust: no completion mark
            shutil.rmtree(venv)
        build = Path(tempfile.mkdtemp(prefix=f".airflow-{version}.tmp-", dir=root))
        try:
            _run([sys.executable, "-m", "venv", str(build)])
            pip = [str(build / "bin" / "python"), "-m", "pip", "install", "-q"]
            _run([*pip, "--upgrade", "pip"])
            _run([*pip, requirement(version)])
            (build / _COMPLETE).write_text(wanted)
            os.rename(build, venv)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return venv


def require_airflow(version: str = AIRFLOW_VERSION) -> Path:
    """:func:`install`, or skip (fail under CI) saying why."""
    try:
        return install(version)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        _fail_or_skip(f"cannot install apache-airflow=={version}: {exc}")
        raise  # not reached


# --------------------------------------------------------------------------- the test DAGs

_HEAD = """\
from __future__ import annotations

import datetime
import time

from airflow.sdk import dag, get_current_context, task
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator

ARGS = dict(schedule=None, start_date=datetime.datetime(2024, 1, 1), catchup=False)
"""

DAGS: dict[str, str] = {
    # success, with the conf printed by the first task
    "ascob_success": """
@dag(**ARGS)
def ascob_success():
    @task
    def extract():
        conf = get_current_context()["dag_run"].conf or {}
        for key in sorted(conf):
            print(f"conf {key}={conf[key]}")
        print("extracting")

    @task
    def load():
        print("loading")
        print("done")

    extract() >> load()

ascob_success()
""",
    # failures with an exception: a Python one and a bash exit code
    "ascob_fail": """
@dag(**ARGS)
def ascob_fail():
    @task
    def explode():
        print("about to fail")
        raise RuntimeError("the table orders is missing")

    bash = BashOperator(task_id="bash_exit", bash_command="echo bash starts; exit 3")
    after = EmptyOperator(task_id="after_bash")  # upstream failed: it never runs
    explode()
    bash >> after

ascob_fail()
""",
    # long: a line a second, for stop, kill -9 and following live output
    "ascob_long": """
@dag(**ARGS, max_active_runs=1)
def ascob_long():
    @task
    def tick():
        seconds = int((get_current_context()["dag_run"].conf or {}).get("SECONDS", "60"))
        for i in range(seconds):
            print(f"tick {i}", flush=True)
            time.sleep(1)

    tick()

ascob_long()
""",
    # retried: fails on try 1, succeeds on try 2
    "ascob_retry": """
@dag(**ARGS)
def ascob_retry():
    @task(retries=1, retry_delay=datetime.timedelta(seconds=1))
    def flaky():
        ti = get_current_context()["ti"]
        print(f"try {ti.try_number}")
        if ti.try_number < 2:
            raise ValueError("first try fails on purpose")
        print("second try works")

    flaky()

ascob_retry()
""",
    # mapped tasks, and a skipped branch
    "ascob_mapped": """
@dag(**ARGS)
def ascob_mapped():
    @task
    def square(x):
        print(f"square {x} = {x * x}")
        return x * x

    @task.branch
    def choose():
        return "taken"

    @task
    def taken():
        print("branch taken")

    @task
    def not_taken():
        print("never printed")

    square.expand(x=[1, 2, 3]) >> choose() >> [taken(), not_taken()]

ascob_mapped()
""",
    # more than 100 task instances, that never run a process (pagination, empty logs)
    "ascob_wide": """
@dag(**ARGS)
def ascob_wide():
    start = EmptyOperator(task_id="start")
    for i in range(103):
        start >> EmptyOperator(task_id=f"empty_{i:03d}")

ascob_wide()
""",
}


class AirflowServer:
    """One Airflow 3 (api-server, scheduler, dag-processor) in its own temporary AIRFLOW_HOME."""

    def __init__(self, venv: Path, pg_bindir: Path) -> None:
        self.venv = venv
        self.postgres = PostgresServer(pg_bindir, database="airflow")
        self.python = str(venv / "bin" / "python")
        self.home = Path(tempfile.mkdtemp(prefix="ascob-airflow-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, Proc] = {}
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")
        env = {k: v for k, v in os.environ.items() if k in keep}
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps({USERNAME: PASSWORD}))
        settings = {
            "CORE__LOAD_EXAMPLES": "False",
            "CORE__DAGS_FOLDER": str(self.home / "dags"),
            "CORE__EXECUTOR": "LocalExecutor",
            "CORE__PARALLELISM": "4",
            "CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
            "CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "CORE__LAZY_LOAD_PLUGINS": "True",
            "DATABASE__SQL_ALCHEMY_CONN": self.postgres.url.replace(
                "postgresql://", "postgresql+psycopg2://", 1
            ),
            "API__HOST": "127.0.0.1",
            "API__PORT": str(self.port),
            "API__BASE_URL": self.url,
            "API__WORKERS": "1",
            "API_AUTH__JWT_SECRET": "ascob-test-jwt-secret-" + os.urandom(8).hex(),
            "SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
            "SCHEDULER__USE_JOB_SCHEDULE": "False",
            "SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "DAG_PROCESSOR__REFRESH_INTERVAL": "30",  # the first scan is at start
            "DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
            "DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "METRICS__STATSD_ON": "False",
        }
        env.update({f"AIRFLOW__{k}": v for k, v in settings.items()})
        env["AIRFLOW_HOME"] = str(self.home)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def airflow(self, *args: str, timeout: float = 600) -> None:
        _run([self.python, "-m", "airflow", *args], env=self.env, timeout=timeout)

    def _database(self) -> None:
        """Start its PostgreSQL and load the cached migrated schema (dumped once per venv and
        PostgreSQL major version, atomically, under a lock)."""
        self.postgres.start()
        major = self.postgres.bindir.parent.name
        template = self.venv / f"schema-{AIRFLOW_VERSION}-pg{major}.sql"
        with (self.venv / ".template.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not template.is_file():
                self.airflow("db", "migrate")
                dump = self.postgres.sql_tool("pg_dump", "--no-owner", "--no-privileges")
                fresh = self.venv / f".schema-{os.getpid()}.sql"
                fresh.write_text(dump)
                os.rename(fresh, template)
                return
        self.postgres.sql_tool("psql", "-q", "-v", "ON_ERROR_STOP=1", stdin=template.read_text())

    def write_dags(self) -> None:
        folder = self.home / "dags"
        folder.mkdir(exist_ok=True)
        for dag_id, body in DAGS.items():
            (folder / f"{dag_id}.py").write_text(_HEAD + textwrap.dedent(body))

    def start(self, timeout: float = 240) -> AirflowServer:
        self.write_dags()
        self._database()
        commands = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.port)],
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
        }
        for name, args in commands.items():
            proc = Proc([self.python, "-m", "airflow", *args], self.env, self.home / f"{name}.log")
            proc.start()
            self.procs[name] = proc
        try:
            wait_until(self._ready, timeout, "Airflow's components and the test DAGs", 0.5)
        except AssertionError:
            raise AssertionError(f"Airflow did not start:\n{self.tails()}") from None
        wild = [s for s in self.listening() if s[1] in ("0.0.0.0", "::")]
        assert not wild, f"Airflow listens on a wildcard address: {wild}"
        return self

    def _ready(self) -> bool:
        dead = [name for name, p in self.procs.items() if not p.alive()]
        if dead:
            raise AssertionError(f"Airflow's {', '.join(dead)} exited:\n{self.tails()}")
        try:
            health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=2).json()
            if any(
                (health.get(part) or {}).get("status") != "healthy"
                for part in ("metadatabase", "scheduler", "dag_processor")
            ):
                return False
            with self.client() as http:
                found = http.get("dags", params={"limit": 100}).json()
        except (httpx.HTTPError, ValueError):
            return False
        return {d["dag_id"] for d in found.get("dags", [])} >= set(DAGS)

    def token(self) -> str:
        r = httpx.post(
            f"{self.url}/auth/token", json={"username": USERNAME, "password": PASSWORD}, timeout=10
        )
        r.raise_for_status()
        return str(r.json()["access_token"])

    def client(self) -> httpx.Client:
        """An authenticated client of the public API (``/api/v2/``)."""
        return httpx.Client(
            base_url=f"{self.url}/api/v2/",
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=30,
        )

    # ------------------------------------------------------------------ processes

    def _pids(self) -> list[int]:
        """Every process of the sessions this server started (each Proc has its own), and of
        its PostgreSQL."""
        sessions = {p.proc.pid for p in self.procs.values() if p.proc is not None}
        found: list[int] = []
        postmaster = self.postgres.pid()  # it holds the listening sockets of its cluster
        if postmaster is not None:
            found.append(postmaster)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) in sessions and int(entry.name) not in found:  # 6: session id
                found.append(int(entry.name))
        return found

    def listening(self) -> list[tuple[int, str, int]]:
        """(pid, address, port) of every TCP socket its processes listen on."""
        inodes: dict[str, int] = {}
        for pid in self._pids():
            try:
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes[target[8:-1]] = pid
            except OSError:
                continue
        found: list[tuple[int, str, int]] = []
        for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                    continue
                hex_addr, hex_port = cols[1].split(":")
                found.append((inodes[cols[9]], _address(hex_addr, width), int(hex_port, 16)))
        return found

    def assert_alive(self) -> None:
        dead = [name for name, p in self.procs.items() if not p.alive()]
        assert not dead, f"Airflow's {', '.join(dead)} exited:\n{self.tails()}"

    def tails(self, n: int = 30) -> str:
        return "\n".join(f"--- {name} ---\n{p.tail(n)}" for name, p in self.procs.items())

    def stop(self) -> None:
        try:
            for proc in self.procs.values():
                proc.stop(timeout=30)
        finally:
            self.postgres.stop()
            shutil.rmtree(self.home, ignore_errors=True)


def _address(hex_addr: str, width: int) -> str:
    raw = bytes.fromhex(hex_addr)
    if width == 8:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    return str(ipaddress.IPv6Address(b"".join(words)))
