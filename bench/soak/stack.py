"""The soak's topology on loopback, and the faults it can suffer.

As deploy/compose.yaml draws it, without containers: PostgreSQL (ASCOB's repository and, in a
second database, Prefect's), a Prefect server on it, a 3-member etcd cluster for the locks, two
``ascob api`` and three ``ascob executor`` processes (each with its own ASCOB_HOME, as each
container has its own volume), plus the backends: the Jenkins and Rundeck stand-ins of the tests,
served from this process (so the checker reads what they recorded), and the dummy backend, whose
world (its SQLite file: every job it started, every stop) is one folder shared by every ASCOB
process through ``ASCOB_DUMMY_DIR``, as one real backend is shared.

Every part can be killed (SIGKILL of its whole process group: the container dies) and started
again on the same port and data; executors can also be paused (SIGSTOP) and resumed.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.etcd_server import EtcdCluster, EtcdServer, etcd_binary
from tests.fakes.fake_jenkins import FakeJenkins
from tests.fakes.fake_rundeck import FakeRundeck
from tests.harness import ROOT_TOKEN, Ascob, PrefectServer, Proc, wait_until
from tests.postgres_server import PostgresServer, require_bindir

LOCK_PREFIX = "ascob/locks/"
JENKINS_TOKEN = "soak-jenkins-secret"
RUNDECK_TOKEN = "soak-rundeck-secret"
# the job parameters every soak job declares: its run, its fencing token, its webhook id
JOB_PARAMETERS = ("RUN", "FENCE", "HOOK")
# job kind -> (number of output lines, seconds per line, how it ends)
JOB_KINDS = {
    "short": (6, 0.1, "ok"),
    "long": (10, 0.3, "ok"),
    "fail": (6, 0.1, "fail"),
}


class Part:
    """Something the soak can kill and start again: a process group it started."""

    def __init__(self, name: str, proc: Proc) -> None:
        self.name, self.proc = name, proc

    def kill(self) -> None:
        self.proc.signal(signal.SIGKILL)
        if self.proc.proc is not None:
            try:
                self.proc.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


class Stack:
    """Start with :meth:`start`, stop with :meth:`stop` (also after a failed start)."""

    def __init__(
        self,
        workdir: Path,
        executors: int = 3,
        apis: int = 2,
        lease: float = 15.0,
        executor_ttl: float = 6.0,
    ) -> None:
        self.workdir = workdir
        self.n_executors, self.n_apis = executors, apis
        self.lease, self.executor_ttl = lease, executor_ttl
        self.deployment = f"ascob-soak-{uuid.uuid4().hex[:8]}"
        self.dummy_dir = workdir / f"dummy-world-{self.deployment}"
        self.etcd: EtcdCluster | None = None
        self.postgres: PostgresServer | None = None
        self.prefect: PrefectServer | None = None
        self.jenkins = FakeJenkins(token=JENKINS_TOKEN)
        self.jenkins.forget_after = 10**9  # the checker reads every queue item at the end
        self.rundeck = FakeRundeck(token=RUNDECK_TOKEN)
        self.apis: list[Ascob] = []
        self.executors: list[Ascob] = []
        self._started: list[Any] = []

    # ------------------------------------------------------------------ start / stop

    def start(self) -> Stack:
        binary = etcd_binary()
        if binary is None:
            raise SystemExit("no etcd binary (apt-get install etcd-server, or ASCOB_TEST_ETCD)")
        self.etcd = EtcdCluster(self.workdir / "etcd", binary, size=3).start()
        self._started.append(self.etcd)
        self.postgres = PostgresServer(require_bindir()).start()
        self._started.append(self.postgres)
        self.prefect = PrefectServer(
            self.workdir, database_url=self.postgres.create_database("prefect")
        ).start()
        self._started.append(self.prefect)
        for fake in (self.jenkins, self.rundeck):
            fake.start()
            self._started.append(fake)
        self._add_backend_jobs()

        config = self.workdir / "backends.toml"
        config.write_text(
            f'[jenkins.ci]\nurl = "{self.jenkins.url}"\nuser = "ascob"\n'
            'token_env = "SOAK_JENKINS_TOKEN"\ntimeout = 3\n\n'
            f'[rundeck.ops]\nurl = "{self.rundeck.url}"\ntoken_env = "SOAK_RUNDECK_TOKEN"\n'
            "api_version = 41\ntimeout = 3\n"
        )
        common = {
            "ASCOB_DEPLOYMENT": self.deployment,
            "ASCOB_DATABASE_URL": self.postgres.url,
            "ASCOB_ETCD_URL": self.etcd.url,
            "ASCOB_EXECUTOR_TTL": str(self.executor_ttl),
            "ASCOB_EXECUTOR_HEARTBEAT": "2",
            "ASCOB_LOCK_LEASE_SECONDS": str(self.lease),
            "ASCOB_CONFIG": str(config),
            "ASCOB_DUMMY_DIR": str(self.dummy_dir),
            "SOAK_JENKINS_TOKEN": JENKINS_TOKEN,
            "SOAK_RUNDECK_TOKEN": RUNDECK_TOKEN,
        }

        def make(command: str, name: str, extra: dict[str, str]) -> Ascob:
            assert self.prefect is not None
            env = {**common, **extra}
            app = Ascob(self.workdir, self.prefect.api_url, command=command, env=env)
            app.proc = Proc(app.proc.args, app.env, app.home / f"{name}.log")
            return app

        self.executors = [
            make("executor", f"soak-x{i}", {"ASCOB_EXECUTOR_ID": f"soak-x{i}"})
            for i in range(self.n_executors)
        ]
        self.apis = [make("api", f"api-{i}", {}) for i in range(self.n_apis)]
        procs = [*self.executors, *self.apis]
        self._started.extend(procs)
        with ThreadPoolExecutor(len(procs)) as pool:
            for done in [pool.submit(p.start, 180) for p in procs]:
                done.result()
        return self

    def _add_backend_jobs(self) -> None:
        declared = {"ASCOB_RUN": "", **{p: "" for p in JOB_PARAMETERS}}
        for kind, (lines, interval, end) in JOB_KINDS.items():
            self.jenkins.add_job(
                f"soak/{kind}",
                parameters=dict(declared),
                lines=[f"{kind} line {i}" for i in range(lines)],
                line_interval=interval,
                result="SUCCESS" if end == "ok" else "FAILURE",
            )
            self.rundeck.add_job(
                "soak",
                kind,
                lines=[f"{kind} line {i}" for i in range(lines)],
                line_interval=interval,
                final="succeeded" if end == "ok" else "failed",
            )

    def stop(self) -> None:
        for part in reversed(self._started):
            try:
                part.stop()
            except Exception as exc:  # stop the rest whatever one part does
                print(f"soak: stopping {part!r} failed: {exc!r}")

    # ------------------------------------------------------------------ reading

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        assert self.postgres is not None
        with psycopg.connect(self.postgres.url, connect_timeout=10) as conn:
            return conn.execute(sql, args).fetchall()

    def etcd_lock_keys(self) -> list[str]:
        """Every key under ASCOB's lock prefix."""
        assert self.etcd is not None
        return self.etcd.keys(LOCK_PREFIX)

    def logs(self, n: int = 40) -> str:
        return "\n".join(
            f"--- {p.proc.log.name} ---\n{p.proc.tail(n)}" for p in [*self.apis, *self.executors]
        )

    def run_lines(self, run_ids: set[int], per_run: int = 25) -> list[str]:
        """What the executors logged about these runs (the lines naming "run N:"), in time order,
        each cut to one screen line: the evidence a failed soak prints for its findings."""
        wanted = {f"run {rid}:": rid for rid in run_ids}
        seen: dict[int, int] = dict.fromkeys(run_ids, 0)
        lines: list[str] = []
        for app in self.executors:
            name = app.proc.log.stem
            if not app.proc.log.exists():
                continue
            with app.proc.log.open(errors="replace") as fh:
                for line in fh:
                    for needle, rid in wanted.items():
                        if needle in line and seen[rid] < per_run:
                            seen[rid] += 1
                            lines.append(f"{line[:27]} {name} {line[27:200].strip()}")
                            break
        return sorted(lines)

    # ------------------------------------------------------------------ faults

    def kill_ascob(self, app: Ascob) -> None:
        Part(app.proc.log.stem, app.proc).kill()

    def restart_ascob(self, app: Ascob) -> None:
        app.proc = Proc(app.proc.args, app.env, app.proc.log)
        app.start(180)

    def pause(self, app: Ascob) -> None:
        app.proc.signal(signal.SIGSTOP)

    def resume(self, app: Ascob) -> None:
        app.proc.signal(signal.SIGCONT)

    def kill_etcd(self, members: list[EtcdServer]) -> None:
        for member in members:
            member.kill()

    def restart_etcd(self, members: list[EtcdServer]) -> None:
        for member in members:
            member.launch()
        wait_until(lambda: all(m.healthy() for m in members), 60, "etcd members to rejoin")

    def kill_prefect(self) -> None:
        assert self.prefect is not None
        Part("prefect", self.prefect.proc).kill()

    def restart_prefect(self) -> None:
        assert self.prefect is not None
        self.prefect.proc = Proc(self.prefect.proc.args, self.prefect.proc.env, self.prefect.log)
        self.prefect.start()

    def kill_postgres(self) -> None:
        assert self.postgres is not None
        self.postgres.kill()

    def restart_postgres(self) -> None:
        assert self.postgres is not None
        self.postgres.restart()

    def api_client(self, i: int) -> httpx.Client:
        return httpx.Client(
            base_url=self.apis[i].url, headers={"X-Api-Token": ROOT_TOKEN}, timeout=20
        )
